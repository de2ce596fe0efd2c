"""/forget erases everything of a user: a conversation driven through the real worker, then
every key in Redis is read back and none may hold the user's text or id (except the ones
`ConversationStore.forget_user` documents as kept, which hold no text)."""

from __future__ import annotations

import itertools
from typing import Any

from redis.asyncio import Redis

from kullm_core.client import CoreClient
from kullm_core.wire import ConversationRef, DoneEvent, Event, Job, UserRef

SECRET = "앨리스의비밀번호는고구마"  # in every question Alice asks
ALICE = UserRef(platform="slack", id="U0ALICE", name="alice")
BOB = UserRef(platform="slack", id="U0BOB", name="bob")
THREAD = ConversationRef(platform="slack", workspace="T1", chat="C1", thread="1700.1")
DM = ConversationRef(platform="slack", workspace="T1", chat="D0ALICE")
# Kept on purpose (no text): counters, exactly-once markers, adapter update dedupe.
KEPT = (b":rate:", b":quota:", b":dedupe:", b":done:", b":seen:", b":cancel:")
_ids = itertools.count()


async def ask(client: CoreClient, conv: ConversationRef, user: UserRef, text: str) -> str:
    sub = await client.submit(conv, user, text, f"slack:T1:{conv.chat}:{next(_ids)}")
    assert sub.status == "queued", sub
    events: list[Event] = [e async for _, e in client.events(sub.job_id)]
    assert isinstance(events[-1], DoneEvent)
    return sub.job_id


async def everything(redis: Redis) -> dict[bytes, bytes]:
    """Every key and a dump of its value, whatever its type."""
    out: dict[bytes, bytes] = {}
    async for key in redis.scan_iter(count=1000):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            value: Any = await redis.get(key)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(await redis.smembers(key))
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "stream":
            value = await redis.xrange(key)
        else:
            value = kind
        out[key] = b"\n".join(_flat(value))
    return out


def _flat(value: Any) -> list[bytes]:
    """The raw bytes in a value (nested lists, tuples, dicts), as stored."""
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, str | int | float):
        return [str(value).encode()]
    if isinstance(value, dict):
        return [b for k, v in value.items() for b in (*_flat(k), *_flat(v))]
    return [b for item in value for b in _flat(item)]


def mentions_alice(key: bytes, dump: bytes) -> bool:
    blob = key + b" " + dump
    return SECRET.encode() in blob or b"U0ALICE" in blob or b'"alice"' in blob


async def test_forget_leaves_nothing_holding_the_users_text_or_id(
    client: CoreClient, worker: Any, redis: Redis
) -> None:
    alice_jobs = [
        await ask(client, THREAD, BOB, "VPN이 안 돼요"),
        await ask(client, THREAD, ALICE, f"저도요. {SECRET}"),
        await ask(client, THREAD, BOB, "재부팅하면 될까요?"),
        await ask(client, DM, ALICE, f"개인 질문: {SECRET}"),
    ]
    del alice_jobs[0], alice_jobs[1]
    # Dead letters: Alice's job (full text) and Bob's.
    for user, text in ((ALICE, f"죽은 작업 {SECRET}"), (BOB, "밥의 죽은 작업")):
        job = Job(id=Job.id_for(text), source_id=text, conversation=THREAD, user=user, text=text)
        await client.queue.dead_letter("0-1", job.dumps(), "max_attempts")
    before = await everything(redis)
    assert any(mentions_alice(k, v) for k, v in before.items())

    turns = await client.forget("slack", "U0ALICE")

    assert turns == 2
    after = await everything(redis)
    left = [k for k, v in after.items() if mentions_alice(k, v)]
    assert [k for k in left if not any(part in k for part in KEPT)] == []
    for k in left:  # what is kept names the user at most, never their text
        assert SECRET.encode() not in after[k]
    assert [t.user for t in await client.history(THREAD)] == ["VPN이 안 돼요", "재부팅하면 될까요?"]
    assert await client.history(DM) == []
    dead = await redis.lrange(client.keys.dead, 0, -1)
    assert len(dead) == 1 and "밥의 죽은 작업" in dead[0].decode()
    for job_id in alice_jobs:
        assert not await redis.exists(client.keys.reply(job_id))


async def test_forget_twice_and_for_someone_unknown_is_harmless(
    client: CoreClient, worker: Any
) -> None:
    await ask(client, DM, ALICE, SECRET)
    assert await client.forget("slack", "U0ALICE") == 1
    assert await client.forget("slack", "U0ALICE") == 0
    assert await client.forget("telegram", "42") == 0
