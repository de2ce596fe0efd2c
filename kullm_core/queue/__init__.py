"""Job queue (a Redis Stream with one consumer group) and per-job reply streams, by role:

- `producer`: enqueue (idempotent on the platform message id), places in line, whether a
  conversation has a job ahead (`JobProducer`);
- `channel`: a job's reply events, written and read (`ReplyChannel`);
- `consumer`: read, heartbeat, take over, conversation order, commit, hand back
  (`JobConsumer`, `ClaimedJob`);
- `scripts`: the Lua they run, with typed KEYS/ARGV.

Conversation order rests on one list per conversation (`Keys.order`): the enqueue script
appends the job's stream id, the commit/fail script removes it, and a job may start only while
its id is first in that list. Nothing expires under a running or dead job: a job taken over
from a dead worker is still first, so the next message of its conversation waits for it
whatever the timing of heartbeats and takeover.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from redis.asyncio import Redis

from kullm_core.keys import Keys
from kullm_core.queue.base import QueueConfig
from kullm_core.queue.channel import ReplyChannel
from kullm_core.queue.consumer import ClaimedJob, JobConsumer
from kullm_core.queue.producer import EnqueueResult, JobProducer
from kullm_core.settings import Settings
from kullm_core.wire import Event, Job


class JobQueue(Protocol):
    """The job-queue seam: what adapters and workers need of it."""

    async def enqueue(self, job: Job) -> EnqueueResult: ...

    async def read(self, consumer: str, count: int, block_ms: int) -> list[ClaimedJob]: ...

    async def position(self, job_id: str) -> int: ...

    async def emit(self, job_id: str, event: Event) -> str: ...

    def events(
        self, job_id: str, last_id: str = "0-0", block_ms: int = 2000
    ) -> AsyncIterator[tuple[str, Event]]: ...


class RedisJobQueue(JobProducer, JobConsumer):
    """Every role on one Redis client (`async with` makes sure the consumer group exists)."""

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> RedisJobQueue:
        return cls(redis, Keys(settings.redis.prefix), QueueConfig.from_settings(settings))

    async def __aenter__(self) -> RedisJobQueue:
        await self.ensure_group()
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


__all__ = [
    "ClaimedJob", "EnqueueResult", "JobConsumer", "JobProducer", "JobQueue", "QueueConfig",
    "RedisJobQueue", "ReplyChannel",
]
