"""What the adapter must remember to finish delivering a reply after a restart.

A delivery record says where a reply goes and which messages already show it; a lease says
which adapter process is delivering it. A process renews its leases while it runs; a record
whose lease has expired (its process died) is taken over by another process, or by the same
deployment after a restart, and its reply stream is read again from the start.

Keys (the core's `kullm_core.keys` lists its own; these are the Telegram adapter's):

| key                           | type   | lifetime                                         |
|-------------------------------|--------|--------------------------------------------------|
| {p}:tg:deliveries             | zset   | 2 days after the last new delivery; members older |
|                               |        | than 1 day are pruned on every scan               |
| {p}:tg:delivery:{job_id}      | string | 1 day (a reply stream lives 1 day before `done`)  |
| {p}:tg:lease:{job_id}         | string | lease_s, renewed by the owning process            |
| {p}:tg:rate:{bot}:{chat}      | zset   | 2 x (chat interval + 15 s), refreshed on each send |
| {p}:tg:rate:{bot}:all         | zset   | 2 x (1 s + 15 s), refreshed on each send           |

The rate keys are `bots.telegram.ratelimit`'s shared send budget (random tokens, no text:
/forget leaves them). /forget drops the user's delivery records: one not yet accepted by the
queue holds the question's text.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from kullm_core.keys import Keys
from kullm_core.leases import RELEASE_OWNED_LUA, RENEW_OWNED_LUA
from kullm_core.wire import ConversationRef, UserRef

log = logging.getLogger(__name__)

RECORD_TTL_S = 86400



class Submit(BaseModel):
    """A question not yet accepted by the queue (kept so a restart can submit it)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["ask", "retry"] = "ask"
    conv: ConversationRef
    user: UserRef
    text: str = ""
    source_id: str
    meta: dict[str, str] = Field(default_factory=dict)


class DeliveryRecord(BaseModel):
    """Where one reply goes and what already shows it. Versioned JSON in Redis."""

    model_config = ConfigDict(extra="ignore")

    v: Literal[1] = 1
    job_id: str
    chat_id: int
    thread_id: int | None = None
    reply_to: int | None = None
    """The user's message the reply answers."""
    user_id: int = 0
    lang: str = "ko"
    conv_key: str = ""
    mode: Literal["draft", "edit"] = "edit"
    draft_id: int = 0
    message_ids: list[int] = Field(default_factory=list)
    """The bot's messages showing this reply, in order."""
    submit: Submit | None = None
    busy_since: float = 0.0
    created_at: float = Field(default_factory=time.time)


class DeliveryRegistry:
    """Delivery records and leases in Redis, owned by one adapter process (`owner`)."""

    def __init__(self, redis: Redis, prefix: str, owner: str, lease_s: float) -> None:
        self.r = redis
        self.root = Keys(prefix).adapter("tg")
        self.owner = owner
        self.lease_ms = max(1, int(lease_s * 1000))
        self._renew = redis.register_script(RENEW_OWNED_LUA)
        self._release = redis.register_script(RELEASE_OWNED_LUA)

    @property
    def index(self) -> str:
        return f"{self.root}:deliveries"

    def record_key(self, job_id: str) -> str:
        return f"{self.root}:delivery:{job_id}"

    def lease_key(self, job_id: str) -> str:
        return f"{self.root}:lease:{job_id}"

    async def claim(self, job_id: str) -> bool:
        """Take the lease of a delivery; False when another live process holds it."""
        return bool(await self.r.set(self.lease_key(job_id), self.owner, nx=True,
                                     px=self.lease_ms))

    async def save(self, rec: DeliveryRecord) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.set(self.record_key(rec.job_id), rec.model_dump_json(), ex=RECORD_TTL_S)
            pipe.zadd(self.index, {rec.job_id: rec.created_at})
            pipe.expire(self.index, 2 * RECORD_TTL_S)
            await pipe.execute()

    async def load(self, job_id: str) -> DeliveryRecord | None:
        raw = await self.r.get(self.record_key(job_id))
        if raw is None:
            return None
        try:
            return DeliveryRecord.model_validate_json(raw)
        except ValueError:
            log.warning("job %s: unreadable delivery record; dropped", job_id)
            await self.finish(job_id)
            return None

    async def renew(self, job_ids: list[str]) -> int:
        if not job_ids:
            return 0
        keys = [self.lease_key(j) for j in job_ids]
        return int(await self._renew(keys=keys, args=[self.owner, self.lease_ms]))

    async def release(self, job_ids: list[str]) -> None:
        """Hand deliveries back (shutdown): another process may take them at once."""
        if job_ids:
            await self._release(keys=[self.lease_key(j) for j in job_ids], args=[self.owner])

    async def finish(self, job_id: str) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.delete(self.record_key(job_id))
            pipe.zrem(self.index, job_id)
            await pipe.execute()
        await self.release([job_id])

    async def forget_user(self, user_id: int) -> int:
        """/forget: drop the delivery records of this user's replies (a record not yet
        accepted by the queue holds the question's text). Returns how many."""
        raw: list[bytes | str] = await self.r.zrange(self.index, 0, -1)  # type: ignore[assignment]
        dropped = 0
        for job_id in (m.decode() if isinstance(m, bytes) else m for m in raw):
            rec = await self.load(job_id)
            if rec is not None and rec.user_id == user_id:
                await self.finish(job_id)
                dropped += 1
        return dropped

    async def orphans(self, exclude: set[str]) -> list[str]:
        """Deliveries no live process holds (their lease expired or was handed back)."""
        await self.r.zremrangebyscore(self.index, "-inf", time.time() - RECORD_TTL_S)
        raw: list[bytes | str] = await self.r.zrange(self.index, 0, -1)  # type: ignore[assignment]
        members = [m.decode() if isinstance(m, bytes) else m for m in raw]
        todo = [m for m in members if m not in exclude]
        if not todo:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for job_id in todo:
                pipe.exists(self.lease_key(job_id))
            held = await pipe.execute()
        return [j for j, h in zip(todo, held, strict=True) if not h]
