"""The generation worker: takes jobs from the stream, runs them concurrently, stays healthy.

Several workers can share one Redis: they join the same consumer group.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kullm_core import metrics
from kullm_core.engine.base import Engine
from kullm_core.keys import GROUP, Keys
from kullm_core.prompt import PromptBuilder
from kullm_core.queue import Delivery, RedisJobQueue
from kullm_core.session import JobSession
from kullm_core.settings import Settings
from kullm_core.store import RedisConversationStore

log = logging.getLogger(__name__)

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


class Worker:
    """Owns the engine's capacity: up to `batching.max_batch_size` jobs at once."""

    def __init__(
        self, settings: Settings, redis: Redis, engine: Engine, tokenizer: Any,
        worker_id: str | None = None,
    ) -> None:
        self.s = settings
        self.r = redis
        self.engine = engine
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.keys = Keys(settings.redis.prefix)
        q, h = settings.queue, settings.history
        self.queue = RedisJobQueue(
            redis, self.keys, max_pending=q.max_pending, dedupe_ttl_s=q.dedupe_ttl_s,
            reply_ttl_s=q.reply_ttl_s, reclaim_idle_s=q.reclaim_idle_s,
            max_attempts=q.max_attempts, retention_s=h.retention_hours * 3600,
            max_turns=h.max_turns,
        )
        self.store = RedisConversationStore(redis, self.keys, h.retention_hours * 3600, h.max_turns)
        g = settings.generation
        self.prompt = PromptBuilder(tokenizer, g.system_prompt, g.context_window, g.max_new_tokens)
        self.capacity = settings.batching.max_batch_size
        self.sessions: dict[str, tuple[JobSession, asyncio.Task[None]]] = {}
        self.deferred: list[Delivery] = []
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
        """Serve until `stop` is set, then finish or hand back in-flight jobs."""
        await self.queue.ensure_group()
        log.info("worker %s: ready (engine %s, %d slots)", self.id, self.engine.name, self.capacity)
        background = [
            asyncio.create_task(self._heartbeat_loop(stop), name="heartbeat"),
            asyncio.create_task(self._cancel_listener(stop), name="cancel-listener"),
            asyncio.create_task(self._reclaim_loop(stop), name="reclaim"),
            asyncio.create_task(self._positions_loop(stop), name="positions"),
        ]
        try:
            await self._take_loop(stop)
        finally:
            await self._drain()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.r.delete(self.keys.worker(self.id))
            log.info("worker %s: stopped", self.id)

    def busy(self) -> int:
        return len(self.sessions) + len(self.deferred)

    async def _take_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._start_deferred()
            free = self.capacity - self.busy()
            if free <= 0:
                self._wake.clear()
                await _wait_any(stop, self._wake, timeout=1.0)
                continue
            block = 200 if self.deferred else 1000
            try:
                deliveries = await self.queue.read(self.id, free, block)
            except REDIS_DOWN as exc:
                log.warning("worker %s: Redis unavailable (%s); retrying", self.id, exc)
                await _wait_any(stop, self._wake, timeout=1.0)
                continue
            for d in deliveries:
                await self._accept(d)

    async def _accept(self, d: Delivery) -> None:
        conv = d.job.conversation.key
        waiting_same = any(x.job.conversation.key == conv for x in self.deferred)
        if not waiting_same and await self.queue.lock(conv, d.job.id):
            self._start(d)
        else:
            log.info("job %s: waiting for the previous reply in its conversation", d.job.id)
            self.deferred.append(d)

    async def _start_deferred(self) -> None:
        seen: set[str] = set()
        for d in list(self.deferred):
            conv = d.job.conversation.key
            if conv in seen:
                continue
            seen.add(conv)
            if await self.queue.lock(conv, d.job.id):
                self.deferred.remove(d)
                self._start(d)

    def _start(self, d: Delivery) -> None:
        session = JobSession(
            d, settings=self.s, engine=self.engine, queue=self.queue, store=self.store,
            prompt=self.prompt, worker_id=self.id,
        )
        task = asyncio.create_task(self._run_session(session), name=f"job-{d.job.id}")
        self.sessions[d.job.id] = (session, task)
        metrics.INFLIGHT.set(len(self.sessions))

    async def _run_session(self, session: JobSession) -> None:
        job_id = session.job.id
        try:
            await session.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: failed; it will be retried or dead-lettered", job_id)
        finally:
            self.sessions.pop(job_id, None)
            metrics.INFLIGHT.set(len(self.sessions))
            self._wake.set()

    async def _drain(self) -> None:
        """Shutdown: give running jobs the grace period, then hand the rest back."""
        grace = self.s.queue.shutdown_grace_s
        tasks = [t for _, t in self.sessions.values()]
        if tasks:
            log.info("worker %s: finishing %d jobs (grace %.0f s)", self.id, len(tasks), grace)
            await asyncio.wait(tasks, timeout=grace)
        handback = [s.d for s, _ in self.sessions.values()] + self.deferred
        for session, task in list(self.sessions.values()):
            session.abandon()
            task.cancel()
        await asyncio.gather(*(t for _, t in self.sessions.values()), return_exceptions=True)
        for d in handback:
            await self.queue.release(d)
            await self.r.xclaim(
                self.keys.jobs, GROUP, self.id, 0, [d.entry_id],
                idle=self.queue.reclaim_idle_ms + 1, retrycount=d.attempt, justid=True,
            )
            log.info("job %s: handed back for another worker", d.job.id)
        self.deferred = []

    # -- background duties ---------------------------------------------------------------

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        interval = self.s.queue.heartbeat_s
        while not stop.is_set():
            try:
                await self.heartbeat()
            except REDIS_DOWN as exc:
                log.warning("worker %s: heartbeat failed (%s)", self.id, exc)
            await _wait_any(stop, timeout=interval)

    async def heartbeat(self) -> None:
        interval = self.s.queue.heartbeat_s
        health = {"id": self.id, "pid": os.getpid(), "engine": self.engine.name,
                  "inflight": len(self.sessions), "deferred": len(self.deferred), "at": time.time()}
        await self.r.set(self.keys.worker(self.id), json.dumps(health), px=int(interval * 3000))
        ids = [s.d.entry_id for s, _ in self.sessions.values()]
        ids += [d.entry_id for d in self.deferred]
        await self.queue.touch(self.id, ids)
        await self.queue.renew_locks(
            {s.job.conversation.key: s.job.id for s, _ in self.sessions.values()}
        )

    async def _reclaim_loop(self, stop: asyncio.Event) -> None:
        interval = self.s.queue.reclaim_idle_s / 3
        while not stop.is_set():
            await _wait_any(stop, timeout=interval)
            free = self.capacity - self.busy()
            if stop.is_set() or free <= 0:
                continue
            try:
                for d in await self.queue.reclaim(self.id, free):
                    await self._accept(d)
            except REDIS_DOWN as exc:
                log.warning("worker %s: reclaim failed (%s)", self.id, exc)

    async def _positions_loop(self, stop: asyncio.Event, interval: float = 2.0) -> None:
        """Tell waiting users their place in line as it moves (one worker at a time)."""
        announced: dict[str, int] = {}
        while not stop.is_set():
            await _wait_any(stop, timeout=interval)
            try:
                if not await self.r.set(self.keys.positions_lock, self.id, nx=True,
                                        px=int(interval * 750)):
                    continue
                waiting = await self.queue.waiting_jobs()
                for job_id, position in waiting:
                    if job_id and announced.get(job_id) != position:
                        await self.queue.announce_position(job_id, position)
                announced = dict(waiting)
            except REDIS_DOWN as exc:
                log.warning("worker %s: position update failed (%s)", self.id, exc)

    async def _cancel_listener(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with self.r.pubsub() as ps:
                    await ps.subscribe(self.keys.cancel_channel)
                    while not stop.is_set():
                        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if msg and msg.get("type") == "message":
                            self._cancel(msg["data"])
            except REDIS_DOWN as exc:
                log.warning("worker %s: cancel channel lost (%s); resubscribing", self.id, exc)
                await _wait_any(stop, timeout=1.0)

    def _cancel(self, raw: bytes | str) -> None:
        job_id = raw.decode() if isinstance(raw, bytes) else raw
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
