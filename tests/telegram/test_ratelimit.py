"""The sliding window that keeps Telegram's per-group and global limits."""

from __future__ import annotations

import asyncio

import pytest

from bots.telegram.ratelimit import Limits, SlidingWindow
from kullm_core.settings import TelegramSettings


def _max_in_window(stamps: list[float], period: float) -> int:
    return max(sum(1 for t in stamps if s <= t < s + period) for s in stamps)


async def test_never_more_than_limit_inside_any_window() -> None:
    window = SlidingWindow(limit=5, period=0.3)
    loop = asyncio.get_running_loop()
    stamps: list[float] = []

    async def call() -> None:
        await window.acquire()
        await asyncio.sleep(0)
        now = loop.time()
        stamps.append(now)
        window.release(now)

    await asyncio.gather(*(call() for _ in range(23)))
    assert len(stamps) == 23
    assert _max_in_window(stamps, 0.3) == 5


async def test_a_call_in_flight_holds_its_slot() -> None:
    window = SlidingWindow(limit=1, period=0.05)
    await window.acquire()
    waiter = asyncio.create_task(window.acquire())
    await asyncio.sleep(0.1)  # longer than the period: only the release may free the slot
    assert not waiter.done()
    window.release()
    await asyncio.sleep(0.01)
    assert not waiter.done()  # the released call still counts for one period
    await asyncio.wait_for(waiter, 1)
    window.release()


async def test_cancelled_reservation_frees_the_slot_at_once() -> None:
    window = SlidingWindow(limit=1, period=60)
    await window.acquire()
    window.cancel()
    await asyncio.wait_for(window.acquire(), 1)
    assert window.used() == 1


def test_limits_from_settings_pace_groups_evenly() -> None:
    limits = Limits.from_settings(TelegramSettings())
    assert (limits.chat_interval_s, limits.group_limit, limits.global_limit) == (1.0, 20, 30)
    assert limits.group_interval_s == 3.0
    with pytest.raises(ValueError):
        SlidingWindow(0, 1)
