"""Telegram's published send limits, and a strict sliding-window counter to keep them.

Why not `aiolimiter` / PTB's `AIORateLimiter`: both are leaky buckets, which let a full burst
through and then refill, so a window of the limit's length can hold close to twice the limit
(20 group messages at 0:00 and 19 more by 0:57). Telegram counts per window, so this module
counts per window. `asyncio-throttle`'s `Throttler` is the same algorithm but stamps a call
when it starts; we stamp it when its response arrives, which is after Telegram received it,
so the server can never see more than `limit` calls inside one `period`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kullm_core.settings import TelegramSettings


@dataclass(frozen=True)
class Limits:
    """What one bot may send. Edits and drafts count like messages."""

    chat_interval_s: float = 1.0
    """Minimum time between two sends into one chat (Telegram: about one per second)."""
    group_limit: int = 20
    group_period_s: float = 60.0
    """At most `group_limit` sends per `group_period_s` into one group (20 per minute)."""
    global_limit: int = 30
    global_period_s: float = 1.0
    """At most `global_limit` sends per `global_period_s` over all chats (30 per second)."""

    @classmethod
    def from_settings(cls, s: TelegramSettings) -> Limits:
        return cls(
            chat_interval_s=s.min_edit_interval_s,
            group_limit=s.group_messages_per_minute,
            global_limit=s.global_messages_per_second,
        )

    @property
    def group_interval_s(self) -> float:
        """Even pacing inside a group: a burst would spend the minute's budget in seconds
        and then leave a final answer waiting for the window to slide."""
        return max(self.chat_interval_s, self.group_period_s / self.group_limit)


class SlidingWindow:
    """At most `limit` calls whose completion stamps fall inside any `period` seconds.

    `acquire()` reserves a slot (a call in flight holds it), `release()` stamps it with the
    completion time, `cancel()` gives an unused reservation back. Waiters are served in order.
    """

    def __init__(
        self, limit: int, period: float, clock: Callable[[], float] | None = None
    ) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self._clock = clock
        self._stamps: deque[float] = deque()
        self._inflight = 0
        self._turn = asyncio.Lock()
        self._changed = asyncio.Event()

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def _expire(self, now: float) -> None:
        while self._stamps and self._stamps[0] + self.period <= now:
            self._stamps.popleft()

    def available_at(self) -> float:
        """Earliest time a call could start (now if a slot is free; inf if all are in flight)."""
        now = self.now()
        self._expire(now)
        # The call may start once enough stamps left the window: the k-th oldest must expire.
        k = len(self._stamps) + self._inflight - self.limit
        if k < 0:
            return now
        return self._stamps[k] + self.period if k < len(self._stamps) else float("inf")

    async def acquire(self) -> None:
        async with self._turn:
            while True:
                at = self.available_at()
                now = self.now()
                if at <= now:
                    self._inflight += 1
                    return
                self._changed.clear()
                timeout = None if at == float("inf") else at - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout)

    def release(self, at: float | None = None) -> None:
        self._inflight -= 1
        self._stamps.append(self.now() if at is None else at)
        self._changed.set()

    def cancel(self) -> None:
        self._inflight -= 1
        self._changed.set()

    def used(self) -> int:
        """Slots taken right now (stamps inside the window plus calls in flight)."""
        self._expire(self.now())
        return len(self._stamps) + self._inflight
