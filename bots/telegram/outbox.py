"""The one outbound scheduler: every message, edit and draft the bot shows goes through here.

One lane per chat sends in order, one call at a time. Each call first takes a slot of the
shared `SendBudget` in Telegram's scopes (`TelegramScopes.send`): at most one per chat
interval (groups: evenly paced, so 20 a minute is never exceeded however many replies share
the group, or however many adapter processes), and `global_limit` per second overall. While
an op waits for its turn, a newer version of the same text (same `key`) replaces it in
place: the merged text goes out once, and an edit whose text is already shown is skipped. A
reply's first text goes first, then final text, then interim updates (which may not take
the overall budget's reserve, so that a new reply always finds room; chats take turns for
the rest). On 429 the chat (and its group) pauses for `retry_after` in every process
(`TelegramScopes.on_429`), and the op stays at the head of the lane, so the final text is
never lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from redis.exceptions import RedisError
from telegram import Bot
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError, TimedOut

from kullm_core import logctx, metrics
from kullm_core.budget import Grant, SendBudget
from kullm_core.scopes import TelegramScopes

log = logging.getLogger(__name__)

_MAX_NETWORK_TRIES = 5
_REMEMBERED_TEXTS = 4096
_REDIS_RETRY_S = 1.0
_KEEP_PLACE_S = 0.5
"""A lane waiting for its turn asks again at least this often (`SendBudget` stale_s / 4)."""


@dataclass(frozen=True)
class SendResult:
    ok: bool
    value: Any = None
    error: BaseException | None = None
    skipped: bool = False
    """Nothing was sent: the text was already shown, or a newer version replaced it."""

    def refused(self, *needles: str) -> bool:
        """True when Telegram refused the call with a message containing one of `needles`."""
        if not isinstance(self.error, BadRequest):
            return False
        text = self.error.message.lower()
        return any(n in text for n in needles)


@dataclass(eq=False)
class OutboxOp:
    """One Bot API call into one chat."""

    chat_id: int
    call: Callable[[Bot], Awaitable[Any]]
    label: str
    key: str | None = None
    """Ops with the same key replace each other while waiting (an edit of one message)."""
    fingerprint: Hashable | None = None
    """What the call shows; skipped when the lane last showed exactly this under `key`."""
    must: bool = False
    """Final text: retried on network errors instead of being dropped."""
    priority: int = 2
    """0: a reply's first visible text, 1: final text, 2: interim update."""
    future: asyncio.Future[SendResult] | None = None
    tries: int = 0
    queued_at: float = 0.0


@dataclass(eq=False)
class _Lane:
    chat_id: int
    ops: list[OutboxOp] = field(default_factory=list)
    next_at: float = 0.0
    task: asyncio.Task[None] | None = None
    inflight: OutboxOp | None = None


def _resolve(op: OutboxOp, outcome: SendResult) -> None:
    if op.future is not None and not op.future.done():
        op.future.set_result(outcome)


def _seconds(value: int | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class Outbox:
    """Schedules outbound calls per chat under Telegram's limits. `async with` or start/stop."""

    def __init__(self, bot: Bot, budget: SendBudget, scopes: TelegramScopes) -> None:
        self.bot = bot
        self.budget = budget
        self.scopes = scopes
        self._lanes: dict[int, _Lane] = {}
        self._shown: OrderedDict[tuple[int, str], Hashable] = OrderedDict()
        """What the last successful call under each (chat, key) showed (bounded)."""
        self.stats: dict[str, int] = {"sent": 0, "skipped": 0, "merged": 0, "retry_after": 0}

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(0)

    # -- submitting ------------------------------------------------------------------------

    def submit(self, op: OutboxOp) -> asyncio.Future[SendResult]:
        """Queue `op`; the future resolves once it was sent, skipped, merged or failed."""
        loop = asyncio.get_running_loop()
        op.future = loop.create_future()
        op.queued_at = loop.time()
        lane = self._lane(op.chat_id)
        for i, old in enumerate(lane.ops):
            if op.key is not None and old.key == op.key:
                op.must = op.must or old.must
                op.priority = min(op.priority, old.priority)
                lane.ops[i] = op
                self.stats["merged"] += 1
                _resolve(old, SendResult(True, skipped=True))
                break
        else:
            lane.ops.append(op)
        if lane.task is None:
            lane.task = asyncio.create_task(self._run(lane), name=f"tg-lane-{op.chat_id}",
                                            context=logctx.fresh(platform="telegram"))
        return op.future

    async def run(self, op: OutboxOp) -> SendResult:
        return await self.submit(op)

    def discard(self, chat_id: int, key: str) -> None:
        """Drop a queued (not yet sent) op, e.g. a draft once the final message is due."""
        lane = self._lanes.get(chat_id)
        if lane is None:
            return
        for op in [o for o in lane.ops if o.key == key]:
            lane.ops.remove(op)
            _resolve(op, SendResult(True, skipped=True))

    async def chat_action(
        self, chat_id: int, thread_id: int | None, action: str = "typing"
    ) -> None:
        """Best effort, outside the lanes: an action is not a message and must not wait."""
        metrics.call("telegram", "sendChatAction")
        try:
            await self.bot.send_chat_action(chat_id, action, message_thread_id=thread_id)
        except TelegramError as exc:
            log.debug("chat %s: chat action failed: %s", chat_id, exc)

    def _lane(self, chat_id: int) -> _Lane:
        lane = self._lanes.get(chat_id)
        if lane is None:
            lane = self._lanes[chat_id] = _Lane(chat_id)
        return lane

    # -- sending ---------------------------------------------------------------------------

    async def _run(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        try:
            while lane.ops:
                delay = lane.next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
                grant = await self._acquire(lane)
                if grant is None:  # Redis unavailable, or nothing left to send
                    lane.next_at = loop.time() + _REDIS_RETRY_S
                    continue
                await self._send_head(lane, grant, loop)
        finally:
            lane.task = None
            if lane.inflight is not None:
                _resolve(lane.inflight, SendResult(False, error=asyncio.CancelledError()))
                lane.inflight = None
            if not lane.ops and self._lanes.get(lane.chat_id) is lane:
                del self._lanes[lane.chat_id]

    async def _acquire(self, lane: _Lane) -> Grant | None:
        """A budget slot for the lane's next call: first and final text are urgent (they may
        take the reserve); interim updates take turns with other chats."""
        try:
            while lane.ops:
                urgent = min(o.priority for o in lane.ops) < 2
                got = await self.budget.try_acquire(
                    self.scopes.send(lane.chat_id), urgent=urgent,
                    reply="" if urgent else f"chat:{lane.chat_id}")
                if isinstance(got, Grant):
                    return got
                await asyncio.sleep(min(got.wait_s, _KEEP_PLACE_S))
        except RedisError as exc:
            log.warning("chat %s: send budget unavailable (%s)", lane.chat_id, exc)
        return None

    async def _send_head(
        self, lane: _Lane, grant: Grant, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Send the lane's most urgent op (oldest first among equals); its slot is reserved."""
        op = lane.ops.pop(min(range(len(lane.ops)), key=lambda i: (lane.ops[i].priority, i)))
        shown_key = (lane.chat_id, op.key or "")
        if op.key is not None and op.fingerprint is not None and self._shown.get(shown_key) == (
            op.fingerprint
        ):
            await self._budget_call(self.budget.cancel, lane.chat_id, grant)
            self.stats["skipped"] += 1
            _resolve(op, SendResult(True, skipped=True))
            return
        lane.inflight = op
        log.debug("chat %s: %s after %.3f s in line", lane.chat_id, op.label,
                  loop.time() - op.queued_at)
        try:
            outcome, wait = await self._call(op)
        finally:
            lane.inflight = None
            await self._budget_call(self.budget.release, lane.chat_id, grant)
        if outcome is None:  # flood control or a network error on final text: try again
            lane.next_at = loop.time() + wait
            if not any(o.key == op.key for o in lane.ops if op.key is not None):
                lane.ops.insert(0, op)
            else:
                _resolve(op, SendResult(True, skipped=True))
            return
        if outcome.ok and op.key is not None:
            self._shown[shown_key] = op.fingerprint
            self._shown.move_to_end(shown_key)
            if len(self._shown) > _REMEMBERED_TEXTS:
                self._shown.popitem(last=False)
        _resolve(op, outcome)

    @staticmethod
    async def _budget_call(fn: Callable[[Grant], Awaitable[object]], chat: int, grant: Grant
                           ) -> None:
        try:
            await fn(grant)
        except RedisError as exc:  # the reservation expires on its own
            log.warning("chat %s: send budget unavailable (%s)", chat, exc)

    async def _call(self, op: OutboxOp) -> tuple[SendResult | None, float]:
        """(outcome, 0) when done; (None, seconds to wait) when the op must be tried again."""
        metrics.call("telegram", op.label)
        try:
            value = await op.call(self.bot)
        except RetryAfter as exc:
            wait = _seconds(exc.retry_after)
            self.stats["retry_after"] += 1
            metrics.rate_limited("telegram", op.label)
            log.warning("chat %s: %s hit flood control; pausing %.1f s", op.chat_id, op.label, wait)
            try:
                await self.budget.pause(self.scopes.on_429(op.chat_id), wait)
            except RedisError:
                log.warning("chat %s: could not share the pause (Redis unavailable)", op.chat_id)
            return None, wait
        except BadRequest as exc:
            if "message is not modified" in exc.message.lower():
                return SendResult(True, skipped=True), 0.0
            log.info("chat %s: %s refused: %s", op.chat_id, op.label, exc.message)
            return SendResult(False, error=exc), 0.0
        except (TimedOut, NetworkError) as exc:
            if op.must and op.tries < _MAX_NETWORK_TRIES:
                op.tries += 1
                log.warning("chat %s: %s failed (%s); retry %d", op.chat_id, op.label, exc,
                            op.tries)
                return None, min(0.5 * 2**op.tries, 10.0)
            log.warning("chat %s: %s failed: %s", op.chat_id, op.label, exc)
            return SendResult(False, error=exc), 0.0
        except TelegramError as exc:
            log.warning("chat %s: %s failed: %s", op.chat_id, op.label, exc)
            return SendResult(False, error=exc), 0.0
        except Exception as exc:  # a bug must fail this op, not the chat's whole lane
            log.exception("chat %s: %s failed unexpectedly", op.chat_id, op.label)
            return SendResult(False, error=exc), 0.0
        self.stats["sent"] += 1
        return SendResult(True, value), 0.0

    # -- stopping --------------------------------------------------------------------------

    async def stop(self, drain_s: float) -> None:
        """Give queued ops `drain_s` seconds to go out, then drop the rest."""
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        if tasks and drain_s > 0:
            await asyncio.wait(tasks, timeout=drain_s)
        for lane in self._lanes.values():
            if lane.task is not None:
                lane.task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lane in self._lanes.values():
            for op in lane.ops:
                _resolve(op, SendResult(False, error=asyncio.CancelledError()))
            lane.ops.clear()
