"""Reply records of one adapter namespace, each under an owner-checked lease.

A record says where a reply goes and what already shows it; a lease says which adapter
process delivers it. The owner renews its leases while it runs. A lease key holds its owner's
id and only the owner renews or releases it, so a replica that paused (GC, network) past its
lease cannot cut short the lease another replica took over: its renewal reports the reply as
lost instead, and it stops delivering it. A record whose lease lapsed (its process died) or
was handed back is an orphan, adopted by the next scan of any replica.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis

from kullm_core.keys import REPLY_INDEX_TTL_S, REPLY_RECORD_TTL_S, Keys
from kullm_core.redis_text import RELEASE_OWNED_LUA, as_str
from kullm_core.wire import ReplyRecord, parse_reply_record

log = logging.getLogger(__name__)

# KEYS: lease keys; ARGV[1]: owner, ARGV[2]: lease in ms. Returns the 1-based indexes of the
# keys this owner no longer holds.
_RENEW_LUA = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  else
    table.insert(lost, i)
  end
end
return lost
"""



class ReplyRegistry:
    """Records and leases under ``{prefix}:{namespace}:`` for the process `owner`."""

    def __init__(self, redis: Redis, keys: Keys, namespace: str, owner: str,
                 lease_s: float) -> None:
        self.r = redis
        self.keys = keys
        self.namespace = namespace
        self.owner = owner
        self.lease_ms = max(1, int(lease_s * 1000))
        self._renew = redis.register_script(_RENEW_LUA)
        self._release = redis.register_script(RELEASE_OWNED_LUA)

    @property
    def index_key(self) -> str:
        return self.keys.reply_index(self.namespace)

    def record_key(self, job_id: str) -> str:
        return self.keys.reply_record(self.namespace, job_id)

    def lease_key(self, job_id: str) -> str:
        return self.keys.reply_lease(self.namespace, job_id)

    async def claim(self, job_id: str) -> bool:
        """Take the lease of a reply; False when another live process holds it."""
        return bool(await self.r.set(self.lease_key(job_id), self.owner, nx=True,
                                     px=self.lease_ms))

    async def save(self, rec: ReplyRecord) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.set(self.record_key(rec.job_id), rec.dumps(), ex=REPLY_RECORD_TTL_S)
            pipe.zadd(self.index_key, {rec.job_id: rec.created_at})
            pipe.expire(self.index_key, REPLY_INDEX_TTL_S)
            await pipe.execute()

    async def load(self, job_id: str) -> ReplyRecord | None:
        raw = await self.r.get(self.record_key(job_id))
        if raw is None:
            return None
        try:
            return parse_reply_record(raw)
        except ValueError:
            log.warning("job %s: unreadable reply record dropped", job_id)
            await self.finish(job_id)
            return None

    async def renew(self, job_ids: list[str]) -> list[str]:
        """Extend the leases held; returns the replies whose lease this owner lost."""
        if not job_ids:
            return []
        lost = await self._renew(keys=[self.lease_key(j) for j in job_ids],
                                 args=[self.owner, self.lease_ms])
        return [job_ids[int(i) - 1] for i in lost or []]

    async def release(self, job_ids: list[str]) -> None:
        """Hand replies back (shutdown): another process may take them at once."""
        if job_ids:
            await self._release(keys=[self.lease_key(j) for j in job_ids], args=[self.owner])

    async def finish(self, job_id: str) -> None:
        """The reply is delivered (or given up): record, index entry and lease go."""
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.delete(self.record_key(job_id))
            pipe.zrem(self.index_key, job_id)
            await pipe.execute()
        await self.release([job_id])

    async def job_ids(self) -> list[str]:
        """Every registered reply (records older than their TTL are pruned first)."""
        await self.r.zremrangebyscore(self.index_key, "-inf", time.time() - REPLY_RECORD_TTL_S)
        raw: list[bytes | str] = await self.r.zrange(self.index_key, 0, -1)  # type: ignore[assignment]
        return [as_str(m) for m in raw]

    async def orphans(self, exclude: set[str]) -> list[str]:
        """Registered replies no live process holds (lease lapsed or handed back)."""
        todo = [j for j in await self.job_ids() if j not in exclude]
        if not todo:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for job_id in todo:
                pipe.exists(self.lease_key(job_id))
            held = await pipe.execute()
        return [j for j, h in zip(todo, held, strict=True) if not h]

    async def forget_user(self, platform: str, user_id: str) -> int:
        """/forget: drop the records of this user's replies (one not yet accepted by the
        queue holds the question's text). Returns how many."""
        dropped = 0
        for job_id in await self.job_ids():
            rec = await self.load(job_id)
            if rec is not None and (rec.user.platform, rec.user.id) == (platform, user_id):
                await self.finish(job_id)
                dropped += 1
        return dropped
