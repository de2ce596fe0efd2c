"""The generation worker: takes jobs from the stream, runs them concurrently, stays healthy.

Several workers can share one Redis: they join the same consumer group.

Redis trouble anywhere (read, start, heartbeat, takeover, commit) is transient: every loop
backs off (bounded, jittered; `kullm_core.redis_checks`), one WARNING opens an outage and one
INFO closes it, and the worker keeps running until it is told to stop (a cancel that redis-py
reports as its own error still stops it: `raise_if_cancelling`). A reply being generated
keeps generating through a blip: deltas that cannot be written wait for the next one, and the
commit is retried, so a blip neither restarts it nor costs an attempt. After an outage the
worker waits `queue.reclaim_idle_s` before taking over other workers' jobs: during the outage
nobody could heartbeat, so every job looks abandoned, and the live workers must get the
chance to renew theirs first.

Out of memory (`noeviction`, writes refused): treated like an outage. The reply is held and
its commit retried, so the user gets it once memory is freed; a reply that cannot be stored
within `queue.job_timeout_s` goes back to the queue and is retried later (counting an attempt;
after `queue.max_attempts` the user gets the `failed` error). The worker never exits for it.

Conversation order: a job runs only while it is the oldest unfinished job of its conversation
(`RedisJobQueue.may_start`); others wait here ("deferred"), heartbeated, never started early.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any

from redis.asyncio import Redis

from kullm_core import metrics
from kullm_core.engine.base import AUTO_SLOTS_CPU, Engine
from kullm_core.keys import (
    POSITIONS_INTERVAL_S,
    POSITIONS_LOCK_TTL_S,
    WORKER_HEALTH_HEARTBEATS,
    Keys,
)
from kullm_core.prompt import PromptBuilder
from kullm_core.queue import ClaimedJob, RedisJobQueue
from kullm_core.redis_checks import (
    REDIS_TROUBLE,
    RedisGuard,
    check_memory_policy,
    is_nogroup,
    raise_if_cancelling,
)
from kullm_core.redis_text import as_str, owner_id
from kullm_core.session import JobSession
from kullm_core.settings import Settings
from kullm_core.store import RedisConversationStore

log = logging.getLogger(__name__)

_HANDBACK_S = 2.0
"""Bound on handing the unfinished jobs back at stop (two round trips when Redis is up)."""


class Worker:
    """Owns the engine's capacity: up to `batching.max_batch_size` jobs at once."""

    def __init__(
        self, settings: Settings, redis: Redis, engine: Engine, tokenizer: Any,
        worker_id: str | None = None,
    ) -> None:
        self.s = settings
        self.r = redis
        self.engine = engine
        self.id = worker_id or owner_id()
        self.keys = Keys(settings.redis.prefix)
        self.queue = RedisJobQueue.from_settings(redis, settings)
        self.store = RedisConversationStore.from_settings(redis, settings)
        self.prompt = PromptBuilder.from_settings(tokenizer, settings.generation)
        self.capacity = engine.slots or settings.batching.max_batch_size or AUTO_SLOTS_CPU
        self.sessions: dict[str, tuple[JobSession, asyncio.Task[None]]] = {}
        self.deferred: list[ClaimedJob] = []
        self.max_deferred = max(64, 4 * self.capacity)
        """Jobs held waiting for their conversation's previous reply (beyond it: read less)."""
        self.guard = RedisGuard(f"worker {self.id}")
        self._starting = asyncio.Lock()
        self._kicks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._taking = True
        self._runner: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        await self.engine.start()
        self._runner = asyncio.create_task(self.run(self._stop), name=f"worker-{self.id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._runner is not None:
            await self._runner
        await self.engine.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then finish or hand back in-flight jobs.

        Raises:
            EvictionPolicyError: the server evicts keys and `redis.allow_eviction` is off.
        """
        if not await self._prepare(stop):
            return
        log.info("worker %s: ready (engine %s, %d slots)", self.id, self.engine.name, self.capacity)
        background = [
            asyncio.create_task(self._heartbeat_loop(stop), name="heartbeat"),
            asyncio.create_task(self._cancel_listener(stop), name="cancel-listener"),
            asyncio.create_task(self._reclaim_loop(stop), name="reclaim"),
            asyncio.create_task(self._positions_loop(stop), name="positions"),
        ]
        taker = asyncio.create_task(self._take_loop(stop), name="take")
        stopped = asyncio.create_task(stop.wait(), name="stop")
        try:
            # the loops end only on stop: one that ends before is a bug, raised below
            await asyncio.wait([stopped, taker, *background], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stopping = True
            stopped.cancel()
            # A read in progress (blocking up to 1 s) is cut, not waited for: what it may have
            # been delivered is in our pending list, which `_drain` hands back whole.
            taker.cancel()
            await asyncio.gather(taker, *self._kicks, return_exceptions=True)
            await self._drain()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            with contextlib.suppress(*REDIS_TROUBLE):
                async with asyncio.timeout(1.0):
                    await self.r.delete(self.keys.worker(self.id))
            log.info("worker %s: stopped", self.id)
        for task in (taker, *background):
            crash = task.exception() if task.done() and not task.cancelled() else None
            if crash is not None:
                raise crash

    async def _prepare(self, stop: asyncio.Event) -> bool:
        """Check the server's memory policy and the consumer group, waiting out an outage."""
        tries = 0
        while not stop.is_set():
            try:
                await check_memory_policy(self.r, self.s.redis.allow_eviction, f"worker {self.id}")
                await self.queue.ensure_group()
            except REDIS_TROUBLE as exc:
                tries += 1
                await _wait_any(stop, timeout=self.guard.failed(exc, "starting", tries))
                continue
            self.guard.ok(wrote=True)
            return True
        return False

    def busy(self) -> int:
        return len(self.sessions) + len(self.deferred)

    async def _take_loop(self, stop: asyncio.Event) -> None:
        tries = 0
        while not stop.is_set():
            try:
                talked = await self._take_some(stop)
            except REDIS_TROUBLE as exc:
                tries += 1
                if is_nogroup(exc):
                    await self._recreate_group()
                await _wait_any(stop, timeout=self.guard.failed(exc, "taking jobs", tries))
                continue
            raise_if_cancelling()  # a cancel redis-py lost without an error
            if talked:
                tries = 0
                self.guard.ok()

    async def _take_some(self, stop: asyncio.Event) -> bool:
        """Start what may start, read more if there is room. True if Redis was asked."""
        talked = await self._start_deferred()
        count = min(self.capacity - len(self.sessions), self.max_deferred - len(self.deferred))
        if count <= 0:
            self._wake.clear()
            await _wait_any(stop, self._wake, timeout=0.2 if self.deferred else 1.0)
            return talked
        block = 200 if self.deferred else 1000
        fresh = [d for d in await self.queue.read(self.id, count, block) if self._accept(d)]
        await self._start_deferred()
        for d in fresh:
            if d in self.deferred:
                log.info("job %s: waiting for the previous reply in its conversation", d.job.id)
        return True

    async def _recreate_group(self) -> None:
        with contextlib.suppress(*REDIS_TROUBLE):
            await self.queue.ensure_group()
            log.warning("worker %s: the consumer group was missing (a new or emptied server); "
                        "recreated it", self.id)

    def _accept(self, d: ClaimedJob) -> bool:
        """Hold a job until it is first in its conversation's order. False if already held."""
        if d.job.id in self.sessions or any(x.entry_id == d.entry_id for x in self.deferred):
            return False
        self.deferred.append(d)
        self._wake.set()
        return True

    async def _start_deferred(self) -> bool:
        """Start the held jobs that are first in their conversation. True if Redis was asked."""
        async with self._starting:
            free = self.capacity - len(self.sessions)
            if not self.deferred or free <= 0 or self._stopping:
                return False
            waiting = list(self.deferred)
            allowed = await self.queue.may_start(waiting)
            ready = [d for d, ok in zip(waiting, allowed, strict=True) if ok]
            for d in ready[:free]:
                if d in self.deferred and not self._stopping:
                    self.deferred.remove(d)
                    self._start(d)
            return True

    def _kick(self) -> None:
        """A reply ended here: start what waited for it now, not at the take loop's next turn
        (its read may be blocking)."""
        if self._stopping or not self.deferred:
            return
        task = asyncio.create_task(self._start_deferred_quietly(), name="start-deferred")
        self._kicks.add(task)
        task.add_done_callback(self._kicks.discard)

    async def _start_deferred_quietly(self) -> None:
        with contextlib.suppress(*REDIS_TROUBLE):  # the take loop tries again and logs
            await self._start_deferred()

    def _start(self, d: ClaimedJob) -> None:
        session = JobSession(
            d, settings=self.s, engine=self.engine, queue=self.queue, store=self.store,
            prompt=self.prompt, worker_id=self.id, guard=self.guard,
        )
        task = asyncio.create_task(self._run_session(session), name=f"job-{d.job.id}")
        self.sessions[d.job.id] = (session, task)
        self._wake.set()
        metrics.INFLIGHT.set(len(self.sessions))

    async def _run_session(self, session: JobSession) -> None:
        job_id = session.job.id
        try:
            await session.run()
        except asyncio.CancelledError:
            raise
        except REDIS_TROUBLE as exc:
            log.warning("job %s: could not be stored (%s); it goes back to the queue", job_id, exc)
        except Exception:
            log.exception("job %s: failed; it will be retried or dead-lettered", job_id)
        finally:
            self.sessions.pop(job_id, None)
            metrics.INFLIGHT.set(len(self.sessions))
            self._wake.set()
            self._kick()

    async def _drain(self) -> None:
        """Shutdown: give running jobs the grace period, then hand the rest back."""
        grace = self.s.queue.shutdown_grace_s
        tasks = [t for _, t in self.sessions.values()]
        if tasks:
            log.info("worker %s: finishing %d jobs (grace %.0f s)", self.id, len(tasks), grace)
            await asyncio.wait(tasks, timeout=grace)
        running = list(self.sessions.values())
        known = [s.d for s, _ in running] + self.deferred
        self.deferred = []
        for session, task in running:
            session.abandon()
            task.cancel()
        await asyncio.gather(*(t for _, t in running), return_exceptions=True)
        handback = {d.entry_id: d.attempt for d in known}
        try:
            async with asyncio.timeout(_HANDBACK_S):
                # everything still pending for us: also what a read cut at stop was delivered
                held = await self.queue.held_by(self.id)
                handback = held | handback
                await self.queue.hand_back(self.id, handback)
        except REDIS_TROUBLE as exc:  # TimeoutError is an OSError
            log.warning("worker %s: could not hand back %d jobs (%s); they are taken over "
                        "after %.0f s", self.id, len(handback), exc, self.s.queue.reclaim_idle_s)
            return
        if handback:
            log.info("worker %s: handed back %d jobs (%d were running)", self.id,
                     len(handback), len(running))

    # -- background duties ---------------------------------------------------------------

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        interval = self.s.queue.heartbeat_s
        while not stop.is_set():
            try:
                await self.heartbeat()
            except REDIS_TROUBLE as exc:
                delay = self.guard.failed(exc, "heartbeating")
                if is_nogroup(exc):
                    await self._recreate_group()
                await _wait_any(stop, timeout=min(delay, interval))
                continue
            self.guard.ok(wrote=True)
            await _wait_any(stop, timeout=interval)

    async def heartbeat(self) -> None:
        interval = self.s.queue.heartbeat_s
        health = {"id": self.id, "pid": os.getpid(), "engine": self.engine.name,
                  "inflight": len(self.sessions), "deferred": len(self.deferred), "at": time.time()}
        ids = [s.d.entry_id for s, _ in self.sessions.values()]
        ids += [d.entry_id for d in self.deferred]
        await self.queue.touch(self.id, ids)  # first: it keeps our jobs, and works when full
        await self.r.set(self.keys.worker(self.id), json.dumps(health),
                         px=int(interval * WORKER_HEALTH_HEARTBEATS * 1000))

    async def _reclaim_loop(self, stop: asyncio.Event) -> None:
        interval = self.s.queue.reclaim_idle_s / 3
        while not stop.is_set():
            await _wait_any(stop, timeout=interval)
            free = self.capacity - len(self.sessions)
            if stop.is_set() or free <= 0 or self._just_recovered():
                continue
            try:
                for d in await self.queue.reclaim(self.id, free):
                    self._accept(d)
            except REDIS_TROUBLE as exc:
                self.guard.failed(exc, "taking over jobs")

    def _just_recovered(self) -> bool:
        """During and just after an outage every job looks abandoned: do not take any over."""
        if self.guard.down.active or self.guard.full.active:
            return True
        since = time.monotonic() - self.guard.recovered_at
        return self.guard.recovered_at > 0 and since < self.s.queue.reclaim_idle_s

    async def _positions_loop(self, stop: asyncio.Event,
                              interval: float = POSITIONS_INTERVAL_S) -> None:
        """Tell waiting users their place in line as it moves (one worker at a time)."""
        announced: dict[str, int] = {}
        while not stop.is_set():
            await _wait_any(stop, timeout=interval)
            try:
                if not await self.r.set(self.keys.positions_lock, self.id, nx=True,
                                        px=int(POSITIONS_LOCK_TTL_S * 1000)):
                    continue
                waiting = await self.queue.waiting_jobs()
                for job_id, position in waiting:
                    if job_id and announced.get(job_id) != position:
                        await self.queue.announce_position(job_id, position)
                announced = dict(waiting)
            except REDIS_TROUBLE as exc:
                self.guard.failed(exc, "announcing places in line")

    async def _cancel_listener(self, stop: asyncio.Event) -> None:
        tries = 0
        while not stop.is_set():
            try:
                async with self.r.pubsub() as ps:
                    await ps.subscribe(self.keys.cancel_channel)
                    tries = 0
                    while not stop.is_set():
                        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if msg and msg.get("type") == "message":
                            self._cancel(msg["data"])
            except REDIS_TROUBLE as exc:
                tries += 1
                delay = self.guard.failed(exc, "listening for cancels", tries)
                await _wait_any(stop, timeout=delay)

    def _cancel(self, raw: bytes | str) -> None:
        job_id = as_str(raw)
        entry = self.sessions.get(job_id)
        if entry:
            log.info("job %s: cancelling", job_id)
            entry[0].cancel()


async def _wait_any(*events: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
