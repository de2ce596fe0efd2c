"""The producer side of the job queue: enqueue (idempotent on the platform message id),
places in line, and whether a conversation already has an unfinished job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis

from kullm_core.keys import GROUP, ORDER_TTL_S, REPLY_TTL_BEFORE_DONE_S, Keys
from kullm_core.queue.base import QueueConfig, QueueRole
from kullm_core.queue.scripts import ENQUEUE_LUA, POSITION_LUA, EnqueueCall, PositionCall
from kullm_core.redis_text import as_str
from kullm_core.wire import Job


@dataclass(frozen=True)
class EnqueueResult:
    status: Literal["queued", "duplicate", "busy"]
    job_id: str
    position: int
    """Queued: jobs waiting ahead of this one plus one. Busy: jobs waiting."""
    entry_id: str = ""


class JobProducer(QueueRole):
    def __init__(self, redis: Redis, keys: Keys, config: QueueConfig) -> None:
        super().__init__(redis, keys, config)
        self._enqueue = redis.register_script(ENQUEUE_LUA)
        self._position = redis.register_script(POSITION_LUA)

    async def enqueue(self, job: Job) -> EnqueueResult:
        """Add a job unless its source message was already enqueued or the queue is full."""
        await self.ensure_group()
        call = EnqueueCall(
            dedupe=self.keys.dedupe(job.source_id), jobs=self.keys.jobs,
            reply=self.keys.reply(job.id), order=self.keys.order(job.conversation.key),
            job_id=job.id, job=job.dumps(), dedupe_ttl=self.config.dedupe_ttl_s,
            max_pending=self.config.max_pending, group=GROUP,
            reply_ttl=REPLY_TTL_BEFORE_DONE_S, order_ttl=ORDER_TTL_S,
        )
        status, ident, position = await self._enqueue(keys=call.keys(), args=call.args())
        code = int(status)
        if code == 0:
            return EnqueueResult("duplicate", as_str(ident) or job.id, 0)
        if code < 0:
            return EnqueueResult("busy", job.id, int(position))
        return EnqueueResult("queued", job.id, int(position), as_str(ident))

    async def _last_delivered(self) -> str:
        for group in await self.r.xinfo_groups(self.keys.jobs):
            if as_str(group["name"]) == GROUP:
                return as_str(group["last-delivered-id"])
        return "0-0"

    async def waiting_jobs(self, limit: int = 200) -> list[tuple[str, int]]:
        """(job id, place in line) of jobs no worker has taken yet, oldest first."""
        last = await self._last_delivered()
        entries: Any = await self.r.xrange(self.keys.jobs, f"({last}", "+", count=limit)
        return [(_job_id(f), n) for n, (_e, f) in enumerate(entries, start=1)]

    async def announce_position(self, job_id: str, position: int) -> bool:
        """Add a `queued` event with a new place in line if the job is still waiting."""
        call = PositionCall.for_position(self.keys.reply(job_id), int(position))
        return bool(await self._position(keys=call.keys(), args=call.args()))

    async def waiting(self) -> int:
        """Jobs no worker has taken yet."""
        info = await self.r.xinfo_groups(self.keys.jobs)
        for group in info:
            if as_str(group["name"]) == GROUP:
                return int(group.get("lag") or 0)
        return 0

    async def position(self, job_id: str) -> int:
        """Place in line of a job no worker has taken yet (1 = next); 0 once taken or gone."""
        last = await self._last_delivered()
        entries: Any = await self.r.xrange(self.keys.jobs, f"({last}", "+")
        for ahead, (_entry, fields) in enumerate(entries, start=1):
            if _job_id(fields) == job_id:
                return ahead
        return 0

    async def has_job_ahead(self, conversation: str, job_id: str) -> bool:
        """True if another unfinished job of this conversation comes before `job_id` (or
        before a job not enqueued yet): it is being answered, or waits in its order list.

        Asked of Redis, so it holds across adapter replicas and workers."""
        order: Any = await self.r.lrange(self.keys.order(conversation), 0, 63)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.active(conversation))
            for entry in order:
                pipe.xrange(self.keys.jobs, entry, entry)
            active, *found = await pipe.execute()
        if as_str(active) not in ("", job_id):
            return True
        for entries in found:
            if not entries:
                continue  # answered or dead-lettered: it does not hold anything up
            # the first unfinished one: ahead of us unless it is this very job
            return _job_id(entries[0][1]) != job_id
        return False


def _job_id(fields: dict[Any, Any]) -> str:
    return as_str(fields.get(b"id") or fields.get("id"))
