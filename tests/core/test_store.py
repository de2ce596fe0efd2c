"""`kullm_core.store.RedisConversationStore` against a real Redis: what is stored, read back,
and removed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from kullm_core.settings import load_settings
from kullm_core.store import RedisConversationStore
from kullm_core.wire import ConversationRef, Job, Turn, UserRef

SHARED = ConversationRef(platform="test", chat="c1", thread="t1")
MINE = ConversationRef(platform="test", chat="c2", user="u1")


def _turn(job: str, user_id: str, text: str) -> Turn:
    return Turn(job_id=job, user_id=user_id, user=text, assistant=f"{text}에 대한 답")


@pytest.fixture
async def store(redis: Redis, redis_url: str) -> AsyncIterator[RedisConversationStore]:
    s = load_settings(None, redis={"url": redis_url}, history={"max_turns": 3})
    async with RedisConversationStore.from_settings(redis, s) as st:
        yield st


async def _put(store: RedisConversationStore, conv: ConversationRef, *turns: Turn) -> None:
    r, k = store._r, store._k
    for t in turns:
        await r.rpush(k.conv(conv.key), t.dumps())
        await r.sadd(k.user_index("test", t.user_id), conv.key)


async def test_history_reads_back_the_turns_and_skips_an_unreadable_one(
    store: RedisConversationStore,
) -> None:
    await _put(store, MINE, _turn("j1", "u1", "하나"))
    await store._r.rpush(store._k.conv(MINE.key), "not json")
    await _put(store, MINE, _turn("j2", "u1", "둘"))
    assert [t.user for t in await store.history(MINE)] == ["하나", "둘"]
    assert await store.reset(MINE)
    assert await store.history(MINE) == []
    assert not await store.reset(MINE)


async def test_forget_removes_only_the_users_turns_and_their_reply_streams(
    store: RedisConversationStore,
) -> None:
    r, k = store._r, store._k
    await _put(store, SHARED, _turn("j1", "u1", "내 질문"), _turn("j2", "u2", "남의 질문"))
    await _put(store, MINE, _turn("j3", "u1", "혼자"))
    for job in ("j1", "j2", "j3", "j-pending"):
        await r.xadd(k.reply(job), {"e": "{}"})
    dead_job = Job(id="j4", source_id="s4", conversation=MINE,
                   user=UserRef(platform="test", id="u1"), text="죽은 질문")
    await r.lpush(k.dead, json.dumps({"v": 1, "entry": "1-1", "reason": "x",
                                      "job": dead_job.dumps()}))
    assert sorted(await store.conversations_of("test", "u1")) == sorted([SHARED.key, MINE.key])

    assert await store.forget_user("test", "u1", ["j-pending"]) == 2
    assert [t.user for t in await store.history(SHARED)] == ["남의 질문"]
    assert not await r.exists(k.conv(MINE.key))
    assert [await r.exists(k.reply(j)) for j in ("j1", "j2", "j3", "j-pending")] == [0, 1, 0, 0]
    assert await r.lrange(k.dead, 0, -1) == []
    assert await store.conversations_of("test", "u1") == []
