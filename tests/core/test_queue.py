"""The job queue (`kullm_core.queue`) against a real Redis, without a worker: what each role
stores and which events a reader gets back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from kullm_core.keys import GROUP, Keys
from kullm_core.queue import ClaimedJob, RedisJobQueue
from kullm_core.redis_text import as_str, owner_id, release_owned
from kullm_core.settings import load_settings
from kullm_core.wire import (
    ConversationRef,
    DoneEvent,
    ErrorEvent,
    Event,
    Job,
    QueuedEvent,
    StartedEvent,
    Turn,
    UserRef,
    parse_event,
)

CONV = ConversationRef(platform="test", chat="c1", user="u1")
OTHER = ConversationRef(platform="test", chat="c2", user="u1")
USER = UserRef(platform="test", id="u1", name="tester")


def _job(source: str, conv: ConversationRef = CONV, text: str = "안녕하세요") -> Job:
    return Job(id=Job.id_for(source), source_id=source, conversation=conv, user=USER, text=text)


@pytest.fixture
async def queue(redis: Redis, redis_url: str) -> AsyncIterator[RedisJobQueue]:
    s = load_settings(None, redis={"url": redis_url},
                      queue={"max_pending": 3, "max_attempts": 2, "heartbeat_s": 0.2,
                             "reclaim_idle_s": 1.0})
    async with RedisJobQueue.from_settings(redis, s) as q:
        yield q


async def _events(q: RedisJobQueue, job_id: str) -> list[Event]:
    """Every event of a job's reply stream so far (no waiting for a terminal one)."""
    raw: Any = await q.r.xrange(q.keys.reply(job_id))
    return [parse_event(f[b"e"]) for _id, f in raw]


async def _take(q: RedisJobQueue, n: int = 1) -> list[ClaimedJob]:
    got = await q.read("w1", n, 100)
    assert len(got) == n
    return got


async def test_enqueue_is_idempotent_on_the_source_message(queue: RedisJobQueue) -> None:
    job = _job("m-1")
    first = await queue.enqueue(job)
    again = await queue.enqueue(job)
    assert (first.status, first.position) == ("queued", 1)
    assert (again.status, again.job_id) == ("duplicate", job.id)
    assert await queue.r.xlen(queue.keys.jobs) == 1
    assert await _events(queue, job.id) == [QueuedEvent(position=1)]


async def test_a_full_queue_answers_busy_and_keeps_nothing_of_the_job(
    queue: RedisJobQueue,
) -> None:
    for i in range(3):
        assert (await queue.enqueue(_job(f"m-{i}", OTHER))).status == "queued"
    refused = _job("m-full")
    res = await queue.enqueue(refused)
    assert (res.status, res.position) == ("busy", 3)
    assert not await queue.r.exists(queue.keys.dedupe(refused.source_id))
    assert not await queue.r.exists(queue.keys.reply(refused.id))
    [taken] = await _take(queue)
    await queue.commit(taken, None, DoneEvent(text=""), 0)
    assert (await queue.enqueue(refused)).status == "queued"  # asked again: accepted now


async def test_places_in_line_move_and_are_announced_only_while_waiting(
    queue: RedisJobQueue,
) -> None:
    jobs = [_job(f"p-{i}", OTHER if i else CONV) for i in range(3)]
    for j in jobs:
        await queue.enqueue(j)
    assert [await queue.position(j.id) for j in jobs] == [1, 2, 3]
    assert await queue.waiting() == 3
    [taken] = await _take(queue)
    assert taken.job.id == jobs[0].id
    assert await queue.waiting_jobs() == [(jobs[1].id, 1), (jobs[2].id, 2)]
    assert await queue.announce_position(jobs[1].id, 1)
    assert not await queue.announce_position(jobs[1].id, 1)  # the same place: nothing new
    await queue.emit(jobs[2].id, StartedEvent())
    assert not await queue.announce_position(jobs[2].id, 1)  # started: no place in line
    assert await _events(queue, jobs[1].id) == [QueuedEvent(position=2), QueuedEvent(position=1)]


async def test_commit_stores_the_turn_answers_once_and_releases_only_its_own_lock(
    queue: RedisJobQueue,
) -> None:
    job = _job("c-1")
    await queue.enqueue(job)
    [cj] = await _take(queue)
    await queue.mark_active(job)
    turn = Turn(job_id=job.id, user_id=USER.id, user=job.text, assistant="반갑습니다")
    assert await queue.commit(cj, turn, DoneEvent(text="반갑습니다"), 7)
    assert not await queue.commit(cj, turn, DoneEvent(text="두 번"), 7)
    history = await queue.r.lrange(queue.keys.conv(CONV.key), 0, -1)
    assert [json.loads(h)["assistant"] for h in history] == ["반갑습니다"]
    assert [e.type for e in await _events(queue, job.id)] == ["queued", "done"]
    assert await queue.r.xlen(queue.keys.jobs) == 0
    assert await queue.r.llen(queue.keys.order(CONV.key)) == 0
    assert not await queue.r.exists(queue.keys.active(CONV.key))
    assert [e async for _, e in queue.events(job.id)][-1] == DoneEvent(text="반갑습니다")

    # a job that does not own the conversation's lock leaves it alone
    later = _job("c-2")
    await queue.enqueue(later)
    [cj2] = await _take(queue)
    await queue.r.set(queue.keys.active(CONV.key), "someone-else")
    await queue.fail(cj2, ErrorEvent(kind="internal"))
    assert await queue.r.get(queue.keys.active(CONV.key)) == b"someone-else"
    assert await queue.r.lrange(queue.keys.conv(CONV.key), 0, -1) == history  # no turn


async def test_only_the_oldest_job_of_a_conversation_may_start(queue: RedisJobQueue) -> None:
    a, b, c = _job("o-1"), _job("o-2"), _job("o-3", OTHER)
    for j in (a, b, c):
        await queue.enqueue(j)
    taken = await _take(queue, 3)
    assert await queue.may_start(taken) == [True, False, True]
    await queue.commit(taken[0], None, DoneEvent(text=""), 0)
    assert await queue.may_start(taken[1:]) == [True, True]


async def test_a_job_ahead_in_the_conversation_is_seen_by_anyone_asking(
    queue: RedisJobQueue,
) -> None:
    first, second = _job("h-1"), _job("h-2")
    assert not await queue.has_job_ahead(CONV.key, first.id)
    await queue.enqueue(first)
    assert not await queue.has_job_ahead(CONV.key, first.id)  # itself is not ahead
    assert await queue.has_job_ahead(CONV.key, second.id)  # not even enqueued yet
    assert not await queue.has_job_ahead(OTHER.key, second.id)
    await queue.enqueue(second)
    assert await queue.has_job_ahead(CONV.key, second.id)
    [cj, _] = await _take(queue, 2)
    await queue.commit(cj, None, DoneEvent(text=""), 0)
    assert not await queue.has_job_ahead(CONV.key, second.id)
    await queue.r.set(queue.keys.active(CONV.key), "a-running-job")
    assert await queue.has_job_ahead(CONV.key, second.id)


async def test_a_handed_back_job_costs_an_attempt_only_if_it_was_begun(
    queue: RedisJobQueue,
) -> None:
    waited, begun = _job("r-1", OTHER), _job("r-2")
    await queue.enqueue(waited)
    await queue.enqueue(begun)
    held = await _take(queue, 2)
    await queue.mark_active(begun)
    await queue.hand_back("w1", held)
    again = {cj.job.id: cj.attempt for cj in await queue.reclaim("w2", 10)}
    assert again == {waited.id: 1, begun.id: 2}


async def test_a_job_delivered_to_a_read_cut_short_is_handed_back_too(
    queue: RedisJobQueue,
) -> None:
    """A worker stopped mid-read never saw what that read was delivered: it is in the
    worker's pending list all the same, and handed back from there at stop."""
    seen, unseen = _job("h-1", OTHER), _job("h-2")
    await queue.enqueue(seen)
    [cj] = await _take(queue)
    await queue.enqueue(unseen)
    await queue.r.xreadgroup(GROUP, "w1", {queue.keys.jobs: ">"}, count=1)  # answer lost
    held = await queue.held_by("w1")
    assert sorted(held.values()) == [1, 1] and cj.entry_id in held
    await queue.hand_back("w1", held)
    again = {c.job.id: c.attempt for c in await queue.reclaim("w2", 10)}
    assert again == {seen.id: 1, unseen.id: 1}  # at once, and neither was begun


async def test_a_job_past_its_attempts_is_answered_failed_and_dead_lettered(
    queue: RedisJobQueue,
) -> None:
    job = _job("d-1")
    await queue.enqueue(job)
    await queue.mark_active(job)
    for consumer in ("w1", "w2"):
        [cj] = await queue.reclaim(consumer, 1) or await _take(queue)
        await queue.hand_back(consumer, [cj])
    assert await queue.reclaim("w3", 1) == []
    assert (await _events(queue, job.id))[-1] == ErrorEvent(kind="failed")
    [dead] = await queue.r.lrange(queue.keys.dead, 0, -1)
    assert json.loads(dead)["reason"] == "max_attempts"
    assert await queue.r.xlen(queue.keys.jobs) == 0


async def test_an_unreadable_job_entry_goes_to_the_dead_letters(queue: RedisJobQueue) -> None:
    await queue.r.xadd(queue.keys.jobs, {"id": "x", "job": '{"v": 9}'})
    assert await queue.read("w1", 1, 100) == []
    [dead] = await queue.r.lrange(queue.keys.dead, 0, -1)
    assert json.loads(dead)["reason"] == "unreadable"
    assert await queue.r.xlen(queue.keys.jobs) == 0


def test_keys_are_built_from_one_prefix() -> None:
    k = Keys("p")
    assert (k.jobs, k.order("c"), k.active("c")) == ("p:jobs", "p:order:c", "p:active:c")


def test_redis_values_read_as_text_and_owner_ids_are_unique() -> None:
    assert [as_str(b"\xea\xb0\x80"), as_str("가"), as_str(None)] == ["가", "가", ""]
    assert owner_id() != owner_id()


async def test_an_owned_key_is_released_only_by_its_owner(redis: Redis) -> None:
    await redis.set("lock-a", "me")
    await redis.set("lock-b", "someone-else")
    await release_owned(redis, ["lock-a", "lock-b", "lock-gone"], "me")
    assert [await redis.get(k) for k in ("lock-a", "lock-b")] == [None, b"someone-else"]
