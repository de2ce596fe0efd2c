"""Job queue (a Redis Stream with one consumer group) and per-job reply streams.

Exactly-once answers rest on three pieces: enqueue dedupes on the platform message id; a
worker keeps its jobs' idle time low by re-claiming them on every heartbeat, so only jobs of a
dead worker become idle enough for `XAUTOCLAIM`; and the commit script writes history, the
`done` event and the ack in one atomic step guarded by a per-job marker.

Conversation order rests on one list per conversation (`Keys.order`): the enqueue script
appends the job's stream id, the commit/fail script removes it, and a job may start only while
its id is first in that list. Nothing expires under a running or dead job: a job taken over
from a dead worker is still first, so the next message of its conversation waits for it
whatever the timing of heartbeats and takeover.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from kullm_core.keys import GROUP, ORDER_TTL_S, Keys
from kullm_core.queue_scripts import COMMIT_LUA, ENQUEUE_LUA, FIRST_LUA, POSITION_LUA
from kullm_core.wire import (
    TERMINAL,
    ErrorEvent,
    Event,
    Job,
    Turn,
    parse_event,
    parse_job,
)

log = logging.getLogger(__name__)

_REPLY_TTL_BEFORE_DONE_S = 86400


@dataclass(frozen=True)
class EnqueueResult:
    status: Literal["queued", "duplicate", "busy"]
    job_id: str
    position: int
    """Queued: jobs waiting ahead of this one plus one. Busy: jobs waiting."""
    entry_id: str = ""


@dataclass(frozen=True)
class Delivery:
    """A job handed to a worker."""

    entry_id: str
    job: Job
    attempt: int


class JobQueue(Protocol):
    async def enqueue(self, job: Job) -> EnqueueResult: ...

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Delivery]: ...

    async def position(self, job_id: str) -> int: ...

    async def emit(self, job_id: str, event: Event) -> str: ...

    def events(
        self, job_id: str, last_id: str = "0-0", block_ms: int = 2000
    ) -> AsyncIterator[tuple[str, Event]]: ...


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisJobQueue:
    """`JobQueue` on Redis Streams."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        max_pending: int,
        dedupe_ttl_s: int,
        reply_ttl_s: int,
        reclaim_idle_s: float,
        max_attempts: int,
        retention_s: float = 30 * 86400,
        max_turns: int = 50,
    ) -> None:
        self.r = redis
        self.keys = keys
        self.max_pending = max_pending
        self.dedupe_ttl_s = dedupe_ttl_s
        self.reply_ttl_s = reply_ttl_s
        self.reclaim_idle_ms = int(reclaim_idle_s * 1000)
        self.max_attempts = max_attempts
        self.retention_ms = int(retention_s * 1000)
        self.max_turns = max_turns
        self._enqueue = redis.register_script(ENQUEUE_LUA)
        self._commit = redis.register_script(COMMIT_LUA)
        self._first = redis.register_script(FIRST_LUA)
        self._position = redis.register_script(POSITION_LUA)

    async def ensure_group(self) -> None:
        try:
            await self.r.xgroup_create(self.keys.jobs, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def __aenter__(self) -> RedisJobQueue:
        await self.ensure_group()
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    # -- producer side ---------------------------------------------------------------------

    async def enqueue(self, job: Job) -> EnqueueResult:
        """Add a job unless its source message was already enqueued or the queue is full."""
        await self.ensure_group()
        status, ident, position = await self._enqueue(
            keys=[self.keys.dedupe(job.source_id), self.keys.jobs, self.keys.reply(job.id),
                  self.keys.order(job.conversation.key)],
            args=[job.id, job.dumps(), self.dedupe_ttl_s, self.max_pending, GROUP,
                  _REPLY_TTL_BEFORE_DONE_S, ORDER_TTL_S],
        )
        code = int(status)
        if code == 0:
            return EnqueueResult("duplicate", _s(ident) or job.id, 0)
        if code < 0:
            return EnqueueResult("busy", job.id, int(position))
        return EnqueueResult("queued", job.id, int(position), _s(ident))

    async def waiting_jobs(self, limit: int = 200) -> list[tuple[str, int]]:
        """(job id, place in line) of jobs no worker has taken yet, oldest first."""
        last = "0-0"
        for group in await self.r.xinfo_groups(self.keys.jobs):
            if _s(group["name"]) == GROUP:
                last = _s(group["last-delivered-id"])
        entries: Any = await self.r.xrange(self.keys.jobs, f"({last}", "+", count=limit)
        return [(_s(f.get(b"id") or f.get("id") or b""), n)
                for n, (_e, f) in enumerate(entries, start=1)]

    async def announce_position(self, job_id: str, position: int) -> bool:
        """Add a `queued` event with a new place in line if the job is still waiting."""
        return bool(await self._position(keys=[self.keys.reply(job_id)], args=[int(position)]))

    async def waiting(self) -> int:
        """Jobs no worker has taken yet."""
        info = await self.r.xinfo_groups(self.keys.jobs)
        for group in info:
            if _s(group["name"]) == GROUP:
                return int(group.get("lag") or 0)
        return 0

    async def position(self, job_id: str) -> int:
        """Place in line of a job no worker has taken yet (1 = next); 0 once taken or gone."""
        last = "0-0"
        for group in await self.r.xinfo_groups(self.keys.jobs):
            if _s(group["name"]) == GROUP:
                last = _s(group["last-delivered-id"])
        entries: Any = await self.r.xrange(self.keys.jobs, f"({last}", "+")
        for ahead, (_entry, fields) in enumerate(entries, start=1):
            if _s(fields.get(b"id") or fields.get("id") or b"") == job_id:
                return ahead
        return 0

    async def emit(self, job_id: str, event: Event) -> str:
        key = self.keys.reply(job_id)
        if event.type in ("started", "queued"):
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.xadd(key, {"e": event.dumps()})
                pipe.expire(key, _REPLY_TTL_BEFORE_DONE_S)
                entry, _ = await pipe.execute()
            return _s(entry)
        return _s(await self.r.xadd(key, {"e": event.dumps()}))

    async def events(
        self, job_id: str, last_id: str = "0-0", block_ms: int = 2000
    ) -> AsyncIterator[tuple[str, Event]]:
        """Yield a job's reply events from after `last_id` until `done` or `error`.

        Resumable: pass the last id a previous reader handled.
        """
        key = self.keys.reply(job_id)
        while True:
            resp: Any = await self.r.xread({key: last_id}, count=256, block=block_ms)
            if not resp and not await self.r.exists(key):
                log.warning("job %s: reply stream is gone (expired); stopping", job_id)
                return
            for _stream, entries in resp or []:
                for entry_id, fields in entries:
                    last_id = _s(entry_id)
                    raw = fields.get(b"e") or fields.get("e")
                    try:
                        event = parse_event(raw)
                    except ValueError:
                        log.warning("job %s: unreadable reply event %s", job_id, last_id)
                        continue
                    yield last_id, event
                    if event.type in TERMINAL:
                        return

    # -- worker side -----------------------------------------------------------------------

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        resp: Any = await self.r.xreadgroup(
            GROUP, consumer, {self.keys.jobs: ">"}, count=count, block=block_ms
        )
        out: list[Delivery] = []
        for _stream, entries in resp or []:
            for entry_id, fields in entries:
                delivery = await self._decode(_s(entry_id), fields, attempt=1)
                if delivery:
                    out.append(delivery)
        return out

    async def _decode(self, entry_id: str, fields: dict, attempt: int) -> Delivery | None:
        raw = fields.get(b"job") or fields.get("job") or b""
        try:
            return Delivery(entry_id, parse_job(raw), attempt)
        except ValueError:
            log.error("job entry %s is not a valid v1 job; moved to dead letters", entry_id)
            await self.dead_letter(entry_id, _s(raw), "unreadable")
            return None

    async def touch(self, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of jobs this worker is still working on (its heartbeat)."""
        if entry_ids:
            ids: list[Any] = list(entry_ids)
            await self.r.xclaim(self.keys.jobs, GROUP, consumer, 0, ids, justid=True)

    async def reclaim(self, consumer: str, count: int) -> list[Delivery]:
        """Take over jobs whose worker stopped heartbeating."""
        resp = await self.r.xautoclaim(
            self.keys.jobs, GROUP, consumer, self.reclaim_idle_ms, "0-0", count=count
        )
        claimed = resp[1] if len(resp) > 1 else []
        out: list[Delivery] = []
        for entry_id, fields in claimed:
            eid = _s(entry_id)
            info = await self.r.xpending_range(self.keys.jobs, GROUP, eid, eid, 1)
            attempt = int(info[0]["times_delivered"]) if info else 2
            delivery = await self._decode(eid, fields or {}, attempt)
            if delivery is None:
                continue
            if attempt > 1 and await self._never_started(delivery.job):
                # it only waited (deferred) on a worker that died: that costs no attempt
                await self.r.xclaim(self.keys.jobs, GROUP, consumer, 0, [eid],
                                    retrycount=1, justid=True)
                attempt = 1
                delivery = Delivery(eid, delivery.job, attempt)
            if attempt > self.max_attempts:
                log.error(
                    "job %s failed %d times; moved to dead letters", delivery.job.id, attempt - 1
                )
                await self.fail(delivery, ErrorEvent(kind="failed"))
                await self.dead_letter(eid, delivery.job.dumps(), "max_attempts")
                continue
            log.warning("job %s: taken over (attempt %d)", delivery.job.id, attempt)
            out.append(delivery)
        return out

    async def may_start(self, deliveries: list[Delivery]) -> list[bool]:
        """For each job: is it the oldest unfinished job of its conversation? (One call.)

        Only such a job may run: the previous message of its conversation has committed or
        failed, on whatever worker, across kills and restarts.
        """
        if not deliveries:
            return []
        keys = [self.keys.jobs] + [self.keys.order(d.job.conversation.key) for d in deliveries]
        res = await self._first(keys=keys, args=[d.entry_id for d in deliveries])
        return [bool(int(x)) for x in res]

    async def _never_started(self, job: Job) -> bool:
        """True if no worker ever began answering this job (it only waited, deferred): its
        reply stream holds only `queued` events and it never became its conversation's
        active job (set first thing when a worker begins, so a crash before `started`
        still counts as an attempt)."""
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.xrevrange(self.keys.reply(job.id), "+", "-", count=1)
            pipe.get(self.keys.active(job.conversation.key))
            last, active = await pipe.execute()
        if not last or _s(active or b"") == job.id:
            return False  # reply stream expired, or it was begun: count the attempt
        raw = last[0][1].get(b"e") or last[0][1].get("e") or b""
        return b'"type":"queued"' in (raw if isinstance(raw, bytes) else raw.encode())

    async def mark_active(self, job: Job) -> None:
        await self.r.set(self.keys.active(job.conversation.key), job.id, ex=86400)

    async def commit(self, d: Delivery, turn: Turn | None, done: Event, tokens: int) -> bool:
        """Atomically: history turn, quota, `done` event, ack. False if already committed."""
        job = d.job
        conv_key = job.conversation.key
        day = time.strftime("%Y%m%d", time.gmtime())
        user_key = f"{job.user.platform}:{job.user.id}"
        res = await self._commit(
            keys=[
                self.keys.done(job.id),
                self.keys.conv(conv_key),
                self.keys.user_index(job.user.platform, job.user.id),
                self.keys.reply(job.id),
                self.keys.jobs,
                self.keys.order(conv_key),
                self.keys.active(conv_key),
                self.keys.quota(user_key, day),
            ],
            args=[
                job.id,
                turn.dumps() if turn else "",
                done.dumps(),
                self.retention_ms,
                self.max_turns,
                self.reply_ttl_s,
                d.entry_id,
                self.dedupe_ttl_s,
                "1" if job.replace_last else "0",
                conv_key,
                GROUP,
                tokens,
            ],
        )
        return bool(int(res))

    async def fail(self, d: Delivery, event: ErrorEvent) -> bool:
        """Answer a job with an error (no history), exactly once."""
        return await self.commit(d, None, event, 0)

    async def hand_back(self, consumer: str, deliveries: list[Delivery]) -> None:
        """Shutdown: make these jobs idle enough for another worker to take at once (one
        round trip). Their place in their conversation's order is kept."""
        if not deliveries:
            return
        async with self.r.pipeline(transaction=False) as pipe:
            for d in deliveries:
                pipe.xclaim(self.keys.jobs, GROUP, consumer, 0, [d.entry_id],
                            idle=self.reclaim_idle_ms + 1, retrycount=d.attempt, justid=True)
            await pipe.execute()

    async def dead_letter(self, entry_id: str, raw: str, reason: str) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            record = {"v": 1, "entry": entry_id, "reason": reason, "job": raw, "at": time.time()}
            pipe.lpush(self.keys.dead, json.dumps(record, ensure_ascii=False))
            pipe.ltrim(self.keys.dead, 0, 999)
            pipe.xack(self.keys.jobs, GROUP, entry_id)
            pipe.xdel(self.keys.jobs, entry_id)
            await pipe.execute()

    async def is_cancelled(self, job_id: str) -> bool:
        return bool(await self.r.exists(self.keys.cancel(job_id)))
