"""The outbound scheduler's order of service and its handling of 429s, on the Redis budget."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bots.slack.scheduler import Scheduler, SlackCall
from kullm_core.budget import Bucket, Refusal, SendBudget
from kullm_core.keys import Keys

UPDATE = Bucket("m:T1:chat.update", 1, 0.02)


@dataclass
class Item:
    """An outbound item that wants `todo` calls on one bucket and logs when it gets them."""

    name: str
    todo: int
    urgent: bool = False
    log: list[str] = field(default_factory=list)
    fail_first: BaseException | None = None
    errors: list[BaseException] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.todo == 0

    def next_op(self, now: float) -> SlackCall | None:
        if not self.todo:
            return None
        return SlackCall("call", (UPDATE,), paused=(UPDATE,), urgent=self.urgent)

    async def run(self, op: SlackCall) -> None:
        if self.fail_first is not None:
            exc, self.fail_first = self.fail_first, None
            raise exc
        self.log.append(self.name)
        self.todo -= 1

    def on_error(self, op: SlackCall, exc: BaseException) -> None:
        self.errors.append(exc)
        self.todo = 0


def _rate_limited() -> SlackApiError:
    resp = AsyncSlackResponse(client=None, http_verb="POST", api_url="chat.update", req_args={},
                              data={"ok": False, "error": "ratelimited"},
                              headers={"Retry-After": "0"}, status_code=429)
    return SlackApiError("ratelimited", resp)


async def _drain(scheduler: Scheduler, *items: Item) -> None:
    async def _done() -> None:
        while not all(i.finished for i in items):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(_done(), 20)


def _scheduler(redis: Redis) -> Scheduler:
    return Scheduler(SendBudget(redis, Keys("kullm"), "slack"))


async def test_replies_take_turns_and_final_text_goes_first(redis: Redis) -> None:
    log: list[str] = []
    async with _scheduler(redis) as scheduler:
        a, b = Item("a", 3, log=log), Item("b", 3, log=log)
        final = Item("final", 1, urgent=True, log=log)
        scheduler.add(a)
        scheduler.add(b)
        scheduler.add(final)
        await _drain(scheduler, a, b, final)
    assert log[0] == "final"
    assert log[1:] in (["a", "b"] * 3, ["b", "a"] * 3), "round robin, least recently served"


async def test_a_429_pauses_and_repeats_the_same_call(redis: Redis) -> None:
    async with _scheduler(redis) as scheduler:
        item = Item("x", 2, fail_first=_rate_limited())
        scheduler.add(item)
        other_replica = SendBudget(redis, Keys("kullm"), "slack")
        while not scheduler.rate_limited:
            await asyncio.sleep(0.01)
        refused = await other_replica.try_acquire((UPDATE,))
        assert isinstance(refused, Refusal) and refused.reason == "paused"
        await _drain(scheduler, item)
        assert item.log == ["x", "x"]
        assert item.errors == []
        assert scheduler.rate_limited == 1


async def test_one_off_calls_return_their_result_or_raise(redis: Redis) -> None:
    async with _scheduler(redis) as scheduler:
        async def ok() -> str:
            return "done"

        async def boom() -> str:
            raise ValueError("no")

        assert await scheduler.call("users.info", "T1", ok) == "done"
        with pytest.raises(ValueError):
            await scheduler.call("users.info", "T1", boom)
