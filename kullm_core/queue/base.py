"""What every role of the job queue shares: the Redis client, the keys, the settings."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from kullm_core.keys import GROUP, Keys
from kullm_core.settings import Settings


@dataclass(frozen=True)
class QueueConfig:
    """The queue's part of the settings (`queue.*`, `history.*`)."""

    max_pending: int
    dedupe_ttl_s: int
    reply_ttl_s: int
    reclaim_idle_s: float
    max_attempts: int
    retention_s: float
    max_turns: int

    @classmethod
    def from_settings(cls, settings: Settings) -> QueueConfig:
        q, h = settings.queue, settings.history
        return cls(max_pending=q.max_pending, dedupe_ttl_s=q.dedupe_ttl_s,
                   reply_ttl_s=q.reply_ttl_s, reclaim_idle_s=q.reclaim_idle_s,
                   max_attempts=q.max_attempts, retention_s=h.retention_hours * 3600,
                   max_turns=h.max_turns)

    @property
    def reclaim_idle_ms(self) -> int:
        return int(self.reclaim_idle_s * 1000)

    @property
    def retention_ms(self) -> int:
        return int(self.retention_s * 1000)


class QueueRole:
    """Base of the queue's roles (producer, reply channel, consumer)."""

    def __init__(self, redis: Redis, keys: Keys, config: QueueConfig) -> None:
        self.r = redis
        self.keys = keys
        self.config = config

    async def ensure_group(self) -> None:
        try:
            await self.r.xgroup_create(self.keys.jobs, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
