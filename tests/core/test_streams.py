"""`kullm_core.streams.ReplyStreams`: many replies followed over one reader, against a real
Redis: each follower gets its own job's events in order, ending with the terminal one."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from kullm_core.keys import Keys
from kullm_core.streams import ReplyStreams
from kullm_core.wire import DeltaEvent, DoneEvent, ErrorEvent, Event, QueuedEvent, StartedEvent

KEYS = Keys("t")


async def _add(redis: Redis, job_id: str, *events: Event) -> list[str]:
    ids = []
    for e in events:
        ids.append((await redis.xadd(KEYS.reply(job_id), {"e": e.dumps()})).decode())
    return ids


async def _follow(streams: ReplyStreams, job_id: str, last_id: str = "0-0") -> list[Event]:
    async def _all() -> list[Event]:
        return [e async for _, e in streams.follow(job_id, last_id)]

    return await asyncio.wait_for(_all(), 10)


async def test_each_follower_gets_its_own_events_in_order_up_to_the_end(redis: Redis) -> None:
    a = [QueuedEvent(position=1), StartedEvent(), DeltaEvent(text="안녕"), DoneEvent(text="안녕")]
    b = [StartedEvent(), DeltaEvent(text="하세"), ErrorEvent(kind="timeout")]
    async with ReplyStreams(redis, KEYS, block_ms=50) as streams:
        got_a = asyncio.create_task(_follow(streams, "a"))
        got_b = asyncio.create_task(_follow(streams, "b"))
        await _add(redis, "a", *a[:2])
        await _add(redis, "b", *b)
        await _add(redis, "a", *a[2:], DeltaEvent(text="after the end"))
        assert await got_a == a
        assert await got_b == b


async def test_a_follower_resumes_after_the_last_entry_it_saw(redis: Redis) -> None:
    ids = await _add(redis, "r", StartedEvent(), DeltaEvent(text="가"), DeltaEvent(text="나"),
                     DoneEvent(text="가나"))
    async with ReplyStreams(redis, KEYS, block_ms=50) as streams:
        assert await _follow(streams, "r", ids[1]) == [DeltaEvent(text="나"),
                                                       DoneEvent(text="가나")]


async def test_an_unreadable_event_is_skipped(redis: Redis) -> None:
    await redis.xadd(KEYS.reply("u"), {"e": '{"v": 1, "type": "nonsense"}'})
    await _add(redis, "u", DoneEvent(text="끝"))
    async with ReplyStreams(redis, KEYS, block_ms=50) as streams:
        assert await _follow(streams, "u") == [DoneEvent(text="끝")]
