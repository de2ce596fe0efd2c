"""The worker side of the job queue: read, heartbeat, take over, order, commit, hand back.

Exactly-once answers rest on three pieces: enqueue dedupes on the platform message id; a
worker keeps its jobs' idle time low by re-claiming them on every heartbeat, so only jobs of a
dead worker become idle enough for `XAUTOCLAIM`; and the commit script writes history, the
`done` event and the ack in one atomic step guarded by a per-job marker.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from kullm_core.keys import ACTIVE_TTL_S, GROUP, QUOTA_TTL_S, Keys, utc_day
from kullm_core.limits import quota_owner
from kullm_core.queue.base import QueueConfig
from kullm_core.queue.channel import ReplyChannel
from kullm_core.queue.scripts import COMMIT_LUA, FIRST_LUA, CommitCall
from kullm_core.redis_text import as_str
from kullm_core.wire import ErrorEvent, Event, Job, QueuedEvent, Turn, parse_job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker took from the stream (read or taken over), with its attempt."""

    entry_id: str
    job: Job
    attempt: int


class JobConsumer(ReplyChannel):
    """Reads and answers jobs; writes their reply events (`ReplyChannel`)."""

    def __init__(self, redis: Redis, keys: Keys, config: QueueConfig) -> None:
        super().__init__(redis, keys, config)
        self._commit = redis.register_script(COMMIT_LUA)
        self._first = redis.register_script(FIRST_LUA)

    async def read(self, consumer: str, count: int, block_ms: int) -> list[ClaimedJob]:
        resp: Any = await self.r.xreadgroup(
            GROUP, consumer, {self.keys.jobs: ">"}, count=count, block=block_ms
        )
        out: list[ClaimedJob] = []
        for _stream, entries in resp or []:
            for entry_id, fields in entries:
                claimed = await self._decode(as_str(entry_id), fields, attempt=1)
                if claimed:
                    out.append(claimed)
        return out

    async def _decode(self, entry_id: str, fields: dict, attempt: int) -> ClaimedJob | None:
        raw = fields.get(b"job") or fields.get("job") or b""
        try:
            return ClaimedJob(entry_id, parse_job(raw), attempt)
        except ValueError:
            log.error("job entry %s is not a valid v1 job; moved to dead letters", entry_id)
            await self.dead_letter(entry_id, as_str(raw), "unreadable")
            return None

    async def touch(self, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of jobs this worker is still working on (its heartbeat)."""
        if entry_ids:
            ids: list[Any] = list(entry_ids)
            await self.r.xclaim(self.keys.jobs, GROUP, consumer, 0, ids, justid=True)

    async def reclaim(self, consumer: str, count: int) -> list[ClaimedJob]:
        """Take over jobs whose worker stopped heartbeating."""
        resp = await self.r.xautoclaim(
            self.keys.jobs, GROUP, consumer, self.config.reclaim_idle_ms, "0-0", count=count
        )
        claimed = resp[1] if len(resp) > 1 else []
        out: list[ClaimedJob] = []
        for entry_id, fields in claimed:
            eid = as_str(entry_id)
            info = await self.r.xpending_range(self.keys.jobs, GROUP, eid, eid, 1)
            attempt = int(info[0]["times_delivered"]) if info else 2
            cj = await self._decode(eid, fields or {}, attempt)
            if cj is None:
                continue
            if attempt > 1 and await self._never_started(cj.job):
                # it only waited (deferred) on a worker that died: that costs no attempt
                await self.r.xclaim(self.keys.jobs, GROUP, consumer, 0, [eid],
                                    retrycount=1, justid=True)
                attempt = 1
                cj = ClaimedJob(eid, cj.job, attempt)
            if attempt > self.config.max_attempts:
                log.error("job %s failed %d times; moved to dead letters", cj.job.id, attempt - 1)
                await self.fail(cj, ErrorEvent(kind="failed"))
                await self.dead_letter(eid, cj.job.dumps(), "max_attempts")
                continue
            log.warning("job %s: taken over (attempt %d)", cj.job.id, attempt)
            out.append(cj)
        return out

    async def may_start(self, jobs: list[ClaimedJob]) -> list[bool]:
        """For each job: is it the oldest unfinished job of its conversation? (One call.)

        Only such a job may run: the previous message of its conversation has committed or
        failed, on whatever worker, across kills and restarts.
        """
        if not jobs:
            return []
        keys = [self.keys.jobs] + [self.keys.order(c.job.conversation.key) for c in jobs]
        res = await self._first(keys=keys, args=[c.entry_id for c in jobs])
        return [bool(int(x)) for x in res]

    async def _never_started(self, job: Job) -> bool:
        """True if no worker ever began answering this job (it only waited, deferred): its
        reply stream holds only `queued` events and it never became its conversation's
        active job (set first thing when a worker begins, so a crash before `started`
        still counts as an attempt)."""
        active = as_str(await self.r.get(self.keys.active(job.conversation.key)))
        if active == job.id:
            return False
        # reply stream expired (None), or anything but `queued`: count the attempt
        return isinstance(await self.last_event(job.id), QueuedEvent)

    async def mark_active(self, job: Job) -> None:
        """The job now answers its conversation (`/stop` finds it; released by its commit
        only while it still names this job)."""
        await self.r.set(self.keys.active(job.conversation.key), job.id, ex=ACTIVE_TTL_S)

    async def commit(self, cj: ClaimedJob, turn: Turn | None, done: Event, tokens: int) -> bool:
        """Atomically: history turn, quota, `done` event, ack. False if already committed."""
        job = cj.job
        conv_key = job.conversation.key
        call = CommitCall(
            done=self.keys.done(job.id), history=self.keys.conv(conv_key),
            user_index=self.keys.user_index(job.user.platform, job.user.id),
            reply=self.keys.reply(job.id), jobs=self.keys.jobs, order=self.keys.order(conv_key),
            active=self.keys.active(conv_key),
            quota=self.keys.quota(quota_owner(job.user), utc_day()),
            job_id=job.id, turn=turn.dumps() if turn else "", event=done.dumps(),
            retention_ms=self.config.retention_ms, max_turns=self.config.max_turns,
            reply_ttl=self.config.reply_ttl_s, entry=cj.entry_id,
            marker_ttl=self.config.dedupe_ttl_s, replace_last="1" if job.replace_last else "0",
            conversation=conv_key, group=GROUP, tokens=tokens, quota_ttl=QUOTA_TTL_S,
        )
        return bool(int(await self._commit(keys=call.keys(), args=call.args())))

    async def fail(self, cj: ClaimedJob, event: ErrorEvent) -> bool:
        """Answer a job with an error (no history), exactly once."""
        return await self.commit(cj, None, event, 0)

    async def held_by(self, consumer: str, count: int = 10_000) -> dict[str, int]:
        """The jobs `consumer` holds, {entry id: attempt}: also those it never saw (a read
        cut short may have been delivered without its answer arriving)."""
        info: Any = await self.r.xpending_range(self.keys.jobs, GROUP, "-", "+", count,
                                                consumername=consumer)
        return {as_str(p["message_id"]): int(p["times_delivered"]) for p in info}

    async def hand_back(self, consumer: str, jobs: list[ClaimedJob] | dict[str, int]) -> None:
        """Shutdown: make these jobs (or {entry id: attempt}) idle enough for another worker
        to take at once (one round trip). Their place in their conversation's order is
        kept."""
        attempts = jobs if isinstance(jobs, dict) else {cj.entry_id: cj.attempt for cj in jobs}
        if not attempts:
            return
        async with self.r.pipeline(transaction=False) as pipe:
            for entry_id, attempt in attempts.items():
                pipe.xclaim(self.keys.jobs, GROUP, consumer, 0, [entry_id],
                            idle=self.config.reclaim_idle_ms + 1, retrycount=attempt,
                            justid=True)
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
