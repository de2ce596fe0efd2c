"""Conversation order: the next message of a conversation never starts before the previous
one is answered, across workers, kills and restarts (real worker processes, real Valkey)."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from kullm_core.client import CoreClient
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.keys import GROUP, Keys
from kullm_core.settings import Settings
from kullm_core.wire import ConversationRef, DoneEvent, Event
from tests.conftest import test_settings_for
from tests.core.helpers import CONV, USER, collect, done
from tests.core.scripted_worker import spawn, worker_env


async def test_only_the_oldest_unfinished_job_of_a_conversation_may_start(
    client: CoreClient, redis: Redis
) -> None:
    other = CONV.model_copy(update={"chat": "other"})
    for n, conv in enumerate([CONV, CONV, other, CONV]):
        await client.submit(conv, USER, f"m{n}", f"rule-{n}")
    q = client.queue
    await q.ensure_group()
    got = await q.read("rule-worker", 10, 100)
    assert await q.may_start(got) == [True, False, True, False]
    await q.commit(got[0], None, DoneEvent(text=""), 0)
    assert await q.may_start(got[1:]) == [True, True, False]
    # a job whose entry left the stream without a commit does not block the next one
    await redis.xdel(Keys().jobs, got[1].entry_id)
    assert await q.may_start(got[3:]) == [True]
    # nor does a conversation whose order list is gone (expired, or an older version)
    await redis.delete(Keys().order(CONV.key))
    assert await q.may_start([got[3]]) == [True]


async def _first_delta(client: CoreClient, job_id: str) -> str:
    """The id of the worker that streams the first delta of a job."""
    worker = ""
    async for _, e in client.events(job_id):
        if e.type == "started":
            worker = e.worker
        if e.type == "delta":
            return worker
    raise AssertionError("no delta")


async def _held_by(redis: Redis, consumer: str, n: int) -> None:
    """Wait until `consumer` holds `n` jobs of the stream."""
    async with asyncio.timeout(30):
        while True:
            info: Any = await redis.xpending_range(Keys().jobs, GROUP, "-", "+", 100)
            if sum(1 for p in info if p["consumer"] == consumer.encode()) >= n:
                return
            await asyncio.sleep(0.02)


class _CrashOn:
    """A prompt builder that raises (an unexpected bug) for one message text."""

    def __init__(self, inner: Any, text: str) -> None:
        self.inner, self.text = inner, text

    def build(self, history: Any, text: str, speaker: Any, context: Any = ()) -> Any:
        if text == self.text:
            raise RuntimeError("prompt builder bug")
        return self.inner.build(history, text, speaker, context)


async def test_a_job_that_crashes_before_it_starts_is_dead_lettered_and_the_next_one_runs(
    client: CoreClient, make_worker: Any, settings: Settings, tmp_path: Path
) -> None:
    """A crash before `started` still counts as an attempt: the job cannot block its
    conversation forever."""
    s = test_settings_for(settings.redis.url, Path(settings.model.path), tmp_path,
                          queue={"max_attempts": 2, "reclaim_idle_s": 0.6})
    engine = ScriptedEngine(lambda _r: "다음 답", chunk_chars=2)
    async with make_worker(engine=engine, settings=s) as w:
        w.prompt = _CrashOn(w.prompt, "터지는 메시지")
        boom = await client.submit(CONV, USER, "터지는 메시지", "crash-1")
        after = await client.submit(CONV, USER, "다음 메시지", "crash-2")
        failed = await collect(client, boom.job_id)
        answered = done(await collect(client, after.job_id))
    assert failed[-1].type == "error" and failed[-1].kind == "failed"
    assert answered.text == "다음 답"
    assert [t.user for t in await client.history(CONV)] == ["다음 메시지"]


@pytest.mark.slow
async def test_m2_waits_for_m1_taken_over_from_a_killed_worker(
    settings: Settings, client: CoreClient, make_worker: Any, tmp_path: Path
) -> None:
    """m1 runs on A, m2 waits on B; A is killed mid-reply: B answers m1 first, then m2."""
    env = worker_env(settings.redis.url, settings.model.path, reply="가나" * 40, delay_s=0.05,
                     BATCHING__MAX_BATCH_SIZE="1")
    a = spawn("A", env)
    try:
        m1 = await client.submit(CONV, USER, "첫 번째", "ord-1")
        assert await _first_delta(client, m1.job_id) == "A"
        engine = ScriptedEngine(lambda _r: "다라", chunk_chars=1)
        s = test_settings_for(settings.redis.url, Path(settings.model.path), tmp_path)
        async with make_worker(engine=engine, settings=s, worker_id="B"):
            m2 = await client.submit(CONV, USER, "두 번째", "ord-2")
            await _held_by(client.redis, "B", 1)  # B waits with m2 while A answers m1
            a.send_signal(signal.SIGKILL)
            await asyncio.to_thread(a.wait, 10)
            first, second = done(await collect(client, m1.job_id)), done(
                await collect(client, m2.job_id))
    finally:
        a.kill()
    assert (first.attempt, second.attempt) == (2, 1)
    assert [t.user for t in await client.history(CONV)] == ["첫 번째", "두 번째"]


@pytest.mark.slow
async def test_random_worker_kills_keep_every_conversation_in_send_order(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    """Property: 8 conversations x 4 messages sent at once to 6 workers; 4 of them SIGKILLed
    at random just as they start a reply: every history equals the send order, each message
    is answered exactly once, none is lost, nothing is left behind."""
    rng = random.Random(12)
    env = worker_env(settings.redis.url, settings.model.path, reply="한국어 답변 " * 6,
                     chunk=3, delay_s=0.02, BATCHING__MAX_BATCH_SIZE="2",
                     QUEUE__MAX_ATTEMPTS="20")
    procs = {f"w{i}": spawn(f"w{i}", env) for i in range(6)}  # started once: imports are slow
    s = test_settings_for(settings.redis.url, Path(settings.model.path), tmp_path,
                          queue={"max_pending": 1000})
    convs = [ConversationRef(platform="test", chat=f"order{i}") for i in range(8)]
    sent = {c.key: [f"{c.chat} 메시지 {n}" for n in range(4)] for c in convs}
    try:
        async with CoreClient(redis, s) as client, client.reply_streams() as streams:
            async def send(c: ConversationRef) -> list[str]:
                return [(await client.submit(c, USER, text, f"{c.chat}-{n}")).job_id
                        for n, text in enumerate(sent[c.key])]

            jobs = [j for ids in await asyncio.gather(*(send(c) for c in convs)) for j in ids]
            events: dict[str, list[Event]] = {j: [] for j in jobs}
            kills = await _follow_and_kill(streams, events, procs, rng, max_kills=4)
            histories = {c.key: [t.user for t in await client.history(c)] for c in convs}
    finally:
        for p in procs.values():
            p.kill()
    assert kills == 4
    assert histories == sent
    terminal = Counter(e.type for evs in events.values() for e in evs
                       if e.type in ("done", "error"))
    assert terminal == {"done": len(jobs)}
    assert await redis.xlen(Keys().jobs) == 0
    assert [k async for k in redis.scan_iter(match="kullm:order:*")] == []


async def _follow_and_kill(
    streams: Any, events: dict[str, list[Event]], procs: dict[str, subprocess.Popen[bytes]],
    rng: random.Random, max_kills: int,
) -> int:
    """Collect every job's events; now and then SIGKILL the worker that just started a job.
    Returns how many were killed."""
    kills = 0
    started: asyncio.Queue[str] = asyncio.Queue()

    async def follow(job_id: str) -> None:
        async for _, e in streams.follow(job_id):
            events[job_id].append(e)
            if e.type == "started":
                started.put_nowait(e.worker)

    followers: asyncio.Future[Any] = asyncio.gather(*(follow(j) for j in events))
    try:
        while kills < max_kills:
            getter: asyncio.Future[Any] = asyncio.ensure_future(started.get())
            finished, _ = await asyncio.wait([getter, followers], timeout=60,
                                             return_when=asyncio.FIRST_COMPLETED)
            if getter not in finished:
                getter.cancel()
                break
            worker = getter.result()
            proc = procs.get(worker)
            if proc is None or proc.poll() is not None or rng.random() < 0.6:
                continue
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
            kills += 1
        await asyncio.wait_for(followers, 120)
    finally:
        followers.cancel()
    return kills
