"""The send budget shared through Redis: per chat, overall, and across processes."""

from __future__ import annotations

import asyncio
import itertools

from redis.asyncio import Redis

from bots.telegram.ratelimit import Limits, RedisRateLimiter
from kullm_core.settings import TelegramSettings

NS = "kullm:tg:rate:1"


async def _server_now(redis: Redis) -> float:
    sec, usec = await redis.time()
    return sec + usec / 1e6


async def test_calls_into_one_chat_from_two_processes_never_overlap_an_interval(
    redis: Redis,
) -> None:
    limits = Limits(chat_interval_s=0.1, global_limit=100)
    a, b = RedisRateLimiter(redis, NS, limits), RedisRateLimiter(redis, NS, limits)
    spans: list[tuple[float, float]] = []  # (start, response) in Redis time

    async def call(limiter: RedisRateLimiter) -> None:
        token = await limiter.acquire(42)
        start = await _server_now(redis)
        await asyncio.sleep(0.01)  # the HTTP call
        end = await _server_now(redis)
        await limiter.release(42, token)
        spans.append((start, end))

    await asyncio.gather(*(call(a if i % 2 else b) for i in range(8)))
    spans.sort()
    gaps = [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(spans)]
    assert len(spans) == 8 and min(gaps) >= 0.1 - 1e-3


async def test_the_overall_limit_counts_every_chat(redis: Redis) -> None:
    limiter = RedisRateLimiter(redis, NS, Limits(chat_interval_s=0.0, global_limit=5,
                                                 global_period_s=60))
    tokens = [await limiter.acquire(chat) for chat in range(4)]
    for chat, token in enumerate(tokens):
        await limiter.release(chat, token)
    interim, _, overall = await limiter.try_acquire(97, urgent=False)
    assert interim is None and overall  # interim updates leave the last fifth to new replies
    fifth, _, _ = await limiter.try_acquire(98, urgent=True)
    assert fifth is not None
    await limiter.release(98, fifth)
    token, wait, overall = await limiter.try_acquire(99)
    assert token is None and overall and 59 < wait <= 60  # a sixth call waits for the window


async def test_a_pause_after_flood_control_holds_every_process(redis: Redis) -> None:
    limits = Limits(chat_interval_s=0.01)
    a, b = RedisRateLimiter(redis, NS, limits), RedisRateLimiter(redis, NS, limits)
    await a.pause(7, 0.3)
    before = await _server_now(redis)
    await b.release(7, await b.acquire(7))
    assert await _server_now(redis) - before >= 0.3 - 0.02


async def test_a_cancelled_reservation_frees_the_chat_at_once(redis: Redis) -> None:
    limiter = RedisRateLimiter(redis, NS, Limits(chat_interval_s=30))
    token = await limiter.acquire(5)
    await limiter.cancel(5, token)
    await asyncio.wait_for(limiter.acquire(5), 1)


async def test_keys_expire(redis: Redis) -> None:
    limiter = RedisRateLimiter(redis, NS, Limits())
    await limiter.release(3, await limiter.acquire(3))
    assert await redis.pttl(limiter.chat_key(3)) > 0 and await redis.pttl(limiter.global_key) > 0


def test_limits_from_settings_pace_groups_evenly() -> None:
    limits = Limits.from_settings(TelegramSettings())
    assert (limits.chat_interval_s, limits.group_limit, limits.global_limit) == (1.0, 20, 30)
    assert limits.interval(-100) == 3.0 and limits.interval(100) == 1.0
