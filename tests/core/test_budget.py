"""The shared send budget (`kullm_core.budget`): two instances on one Redis are two replicas.

Times compared here are Redis's own clock (the grants' and pauses' stamps), the clock the
budget enforces its windows with; nothing is asserted about how fast anything ran.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ConnectionError

from kullm_core.budget import Bucket, Grant, Refusal, SendBudget
from kullm_core.keys import Keys
from kullm_core.scopes import SlackScopes, TelegramScopes

KEYS = Keys("kullm")


def _replicas(redis: Redis, n: int = 2, **kw: float) -> list[SendBudget]:
    return [SendBudget(redis, KEYS, "tg:bot", **kw) for _ in range(n)]


def _most_in_any_window(stamps: list[int], period_us: int) -> int:
    stamps = sorted(stamps)
    return max(sum(1 for s in stamps[i:] if s < start + period_us)
               for i, start in enumerate(stamps))


async def test_two_replicas_never_exceed_a_bucket(redis: Redis) -> None:
    bucket = Bucket("chat:1", 4, 0.2)
    grants: list[int] = []

    async def sender(budget: SendBudget, n: int) -> None:
        for _ in range(n):
            async with budget.slot([bucket], urgent=True) as grant:
                grants.append(grant.at_us)

    await asyncio.gather(*(sender(b, 5) for b in _replicas(redis) for _ in range(4)))
    assert len(grants) == 40
    assert _most_in_any_window(grants, int(0.2 * 1_000_000)) == 4


async def test_a_slot_counts_from_the_response_and_a_cancelled_one_is_free(
    redis: Redis
) -> None:
    a, b = _replicas(redis)
    bucket = Bucket("chat:2", 1, 60.0)
    grant = await a.try_acquire([bucket])
    assert isinstance(grant, Grant)
    refused = await b.try_acquire([bucket])
    assert isinstance(refused, Refusal) and refused.reason == "full"
    await a.cancel(grant)
    assert isinstance(await b.try_acquire([bucket]), Grant)


async def test_a_429_pauses_exactly_its_scope_on_every_replica(redis: Redis) -> None:
    a, b = _replicas(redis)
    scopes = TelegramScopes()
    group, other = scopes.send(-100), scopes.send(-200)
    paused_at = await a.pause(scopes.on_429(-100), 0.3)
    refused = await b.try_acquire(group, urgent=True)
    assert isinstance(refused, Refusal) and refused.reason == "paused"
    assert isinstance(await b.try_acquire(other, urgent=True), Grant)  # another chat sends
    grant = await b.acquire(group, urgent=True)
    assert grant.at_us >= paused_at + 300_000  # never a call inside the Retry-After window


async def test_a_slack_429_pauses_the_method_in_the_whole_workspace(redis: Redis) -> None:
    a, b = (SendBudget(redis, KEYS, "slack:app") for _ in range(2))
    slack = SlackScopes()
    await a.pause(slack.on_429("T1", "chat.startStream", "C1"), 30)
    for channel in ("C1", "C2"):
        refused = await b.try_acquire(slack.call("T1", "chat.startStream", channel))
        assert isinstance(refused, Refusal) and refused.reason == "paused"
    assert isinstance(await b.try_acquire(slack.call("T1", "chat.update")), Grant)
    assert isinstance(await b.try_acquire(slack.call("T2", "chat.startStream", "C1")), Grant)
    assert isinstance(await b.try_acquire(slack.call("T1", "chat.postMessage", "C3")), Grant)


async def test_replies_share_a_full_bucket_in_turn_across_replicas(redis: Redis) -> None:
    a, b = _replicas(redis)
    bucket = Bucket("all", 1, 0.05)
    order: list[str] = []
    stop = asyncio.Event()

    async def streaming(budget: SendBudget, reply: str) -> None:
        while not stop.is_set():  # a reply that always has more text to show
            async with budget.slot([bucket], reply=reply):
                order.append(reply)
                if len(order) >= 30:
                    stop.set()

    await asyncio.gather(streaming(a, "r1"), streaming(a, "r2"), streaming(b, "r3"))
    counts = Counter(order[:30])
    assert set(counts) == {"r1", "r2", "r3"}
    assert max(counts.values()) - min(counts.values()) <= 2


async def test_urgent_calls_keep_the_reserve(redis: Redis) -> None:
    [budget] = _replicas(redis, 1)
    bucket = Bucket("all", 3, 60.0, reserve=1)
    assert isinstance(await budget.try_acquire([bucket], reply="r1"), Grant)
    assert isinstance(await budget.try_acquire([bucket], reply="r2"), Grant)
    refused = await budget.try_acquire([bucket], reply="r3")
    assert isinstance(refused, Refusal) and refused.reason == "full"
    assert isinstance(await budget.try_acquire([bucket], urgent=True), Grant)


class _Blipping(Redis):
    """A real client whose next `fail` script calls are lost, as when Redis restarts."""

    fail = 0

    async def evalsha(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("Error UNKNOWN while writing to socket. Connection lost.")
        return await super().evalsha(*args, **kwargs)


async def test_a_release_lost_to_a_redis_blip_is_retried(redis: Redis, redis_url: str) -> None:
    """The response arrived while Redis was away: the slot counts from the release, not as
    in flight for `inflight_s` (which would hold the chat silent that long)."""
    flaky = cast(_Blipping, _Blipping.from_url(redis_url))
    budget = SendBudget(flaky, KEYS, "tg:bot", inflight_s=3600.0)
    bucket = Bucket("chat:3", 1, 0.05)
    grant = await budget.try_acquire([bucket], urgent=True)
    assert isinstance(grant, Grant)
    flaky.fail = 2
    released_at = await budget.release(grant)
    assert flaky.fail == 0
    assert await redis.zscore(budget.key(bucket), grant.token) == released_at
    assert isinstance(await budget.acquire([bucket], urgent=True), Grant)
    await flaky.aclose()


async def _redis_now_us(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1_000_000 + int(micros)


async def test_a_long_call_stays_in_flight_and_a_dead_replicas_slot_lapses_alone(
    redis: Redis,
) -> None:
    """A call lasting longer than `inflight_s` keeps its slot while its replica lives; once
    the replica is gone (no release, nothing renews) the slot counts until at most
    `inflight_s` after the last renewal, not for the longest call there could be."""
    inflight_us = 600_000
    a, b = _replicas(redis, inflight_s=inflight_us / 1_000_000)
    bucket = Bucket("chat:4", 1, 60.0)
    slow = await a.try_acquire([bucket], urgent=True)
    assert isinstance(slow, Grant)
    for _ in range(8):  # 4 × inflight_s: renewed all along
        await asyncio.sleep(0.3)
        refused = await b.try_acquire([bucket], urgent=True)
        assert isinstance(refused, Refusal) and refused.reason == "full"
    assert await redis.zscore(a.key(bucket), slow.token) > await _redis_now_us(redis)
    dying = await a.try_acquire([Bucket("chat:5", 1, 60.0)], urgent=True)
    assert isinstance(dying, Grant)
    await a.release(slow)
    assert a._keeper is not None
    a._keeper.cancel()  # the replica dies with `dying` in flight
    died_at = await _redis_now_us(redis)
    lapses_at = await redis.zscore(a.key(dying.buckets[0]), dying.token)
    assert lapses_at <= died_at + inflight_us
    assert await redis.zscore(a.key(bucket), slow.token) <= died_at  # released: counts as sent
