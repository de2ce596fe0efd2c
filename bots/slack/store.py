"""The Slack adapter's own Redis state, all under `{redis.prefix}:slack:`.

| key                                   | type   | lifetime                                     |
|---------------------------------------|--------|----------------------------------------------|
| {p}:slack:inflight                    | zset   | registry_ttl_s, renewed on every write       |
| {p}:slack:reply:{job_id}              | string | registry_ttl_s (deleted once delivered)       |
| {p}:slack:lease:{job_id}              | string | lease_s, renewed by the owning adapter        |
| {p}:slack:thread:{team}:{chan}:{ts}   | string | history retention (the bot follows the thread) |
| {p}:slack:last:{team}:{chan}:{user}   | string | history retention (target of /kullm commands)  |
| {p}:slack:locale:{team}:{user}        | string | locale_ttl_s                                  |

The in-flight registry is what lets a restarted adapter finish replies that were streaming:
the reply streams hold the text, the registry holds where it is shown (message ts).
/forget drops a user's `locale` (their name) and `last` keys; registry entries hold no text
and are deleted once delivered.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis

from bots.slack.config import SlackTuning
from bots.slack.target import Target
from kullm_core.keys import Keys
from kullm_core.leases import RELEASE_OWNED_LUA, RENEW_OWNED_LUA

log = logging.getLogger(__name__)



def _s(raw: bytes | str | None) -> str:
    return raw.decode() if isinstance(raw, bytes) else (raw or "")


@dataclass
class Entry:
    """A reply in flight: where it shows, and the messages it has so far."""

    job_id: str
    source_id: str
    target: Target
    mode: str = "update"
    msgs: list[dict[str, object]] = field(default_factory=list)

    def dumps(self) -> str:
        return json.dumps({"v": 1, "job": self.job_id, "source": self.source_id,
                           "target": self.target.meta(), "mode": self.mode, "msgs": self.msgs})

    @classmethod
    def loads(cls, raw: str) -> Entry:
        d = json.loads(raw)
        return cls(d["job"], d["source"], Target.from_meta(d["target"]), d.get("mode", "update"),
                   list(d.get("msgs") or []))


class SlackStore:
    """Registry of replies in flight with per-reply leases, plus small per-thread markers."""

    def __init__(self, redis: Redis, prefix: str, tuning: SlackTuning, owner: str,
                 retention_s: float) -> None:
        self.r = redis
        self.p = Keys(prefix).adapter("slack")
        self.tuning = tuning
        self.owner = owner
        self.retention_s = max(60, int(retention_s))
        self._renew = redis.register_script(RENEW_OWNED_LUA)
        self._release = redis.register_script(RELEASE_OWNED_LUA)

    # -- keys ------------------------------------------------------------------------------

    @property
    def inflight_key(self) -> str:
        return f"{self.p}:inflight"

    def reply_key(self, job_id: str) -> str:
        return f"{self.p}:reply:{job_id}"

    def lease_key(self, job_id: str) -> str:
        return f"{self.p}:lease:{job_id}"

    def thread_key(self, team: str, channel: str, thread: str) -> str:
        return f"{self.p}:thread:{team}:{channel}:{thread}"

    def last_key(self, team: str, channel: str, user: str) -> str:
        return f"{self.p}:last:{team}:{channel}:{user}"

    def locale_key(self, team: str, user: str) -> str:
        return f"{self.p}:locale:{team}:{user}"

    # -- registry --------------------------------------------------------------------------

    async def save(self, entry: Entry) -> None:
        ttl = self.tuning.registry_ttl_s
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.set(self.reply_key(entry.job_id), entry.dumps(), ex=ttl)
            pipe.zadd(self.inflight_key, {entry.job_id: time.time()})
            pipe.expire(self.inflight_key, ttl)
            await pipe.execute()

    async def create(self, entry: Entry) -> bool:
        """Register a new reply; False when one is registered already (a redelivery)."""
        ttl = self.tuning.registry_ttl_s
        if not await self.r.set(self.reply_key(entry.job_id), entry.dumps(), nx=True, ex=ttl):
            return False
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.zadd(self.inflight_key, {entry.job_id: time.time()})
            pipe.expire(self.inflight_key, ttl)
            await pipe.execute()
        return True

    async def load(self, job_id: str) -> Entry | None:
        raw = await self.r.get(self.reply_key(job_id))
        if not raw:
            return None
        try:
            return Entry.loads(_s(raw))
        except (ValueError, KeyError):
            log.warning("job %s: unreadable registry entry dropped", job_id)
            return None

    async def remove(self, job_id: str) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.delete(self.reply_key(job_id))
            pipe.zrem(self.inflight_key, job_id)
            await pipe.execute()
        await self.release([job_id])

    async def pending(self) -> list[str]:
        """Job ids in the registry (entries older than the registry TTL are pruned)."""
        oldest = time.time() - self.tuning.registry_ttl_s
        await self.r.zremrangebyscore(self.inflight_key, 0, oldest)
        members: list[bytes | str] = await self.r.zrange(self.inflight_key, 0, -1)  # type: ignore[assignment]
        return [_s(j) for j in members]

    async def claim(self, job_id: str) -> bool:
        """Take the lease of a reply nobody delivers (its adapter stopped or crashed)."""
        ms = int(self.tuning.lease_s * 1000)
        return bool(await self.r.set(self.lease_key(job_id), self.owner, nx=True, px=ms))

    async def renew(self, job_ids: list[str]) -> int:
        if not job_ids:
            return 0
        ms = int(self.tuning.lease_s * 1000)
        keys = [self.lease_key(j) for j in job_ids]
        return int(await self._renew(keys=keys, args=[self.owner, ms]))

    async def release(self, job_ids: list[str]) -> None:
        if job_ids:
            await self._release(keys=[self.lease_key(j) for j in job_ids], args=[self.owner])

    # -- conversation markers --------------------------------------------------------------

    async def join_thread(self, team: str, channel: str, thread: str) -> None:
        await self.r.set(self.thread_key(team, channel, thread), "1", ex=self.retention_s)

    async def in_thread(self, team: str, channel: str, thread: str) -> bool:
        return bool(await self.r.exists(self.thread_key(team, channel, thread)))

    async def set_last(self, team: str, channel: str, user: str, thread: str) -> None:
        await self.r.set(self.last_key(team, channel, user), thread or "-", ex=self.retention_s)

    async def last(self, team: str, channel: str, user: str) -> str | None:
        """The thread of the user's latest question in this channel ('' = DM top level)."""
        raw = _s(await self.r.get(self.last_key(team, channel, user)))
        if not raw:
            return None
        return "" if raw == "-" else raw

    async def forget_user(self, user: str) -> int:
        """/forget: drop what names this user (their cached profile: locale and name, and
        the thread of their last question) in every workspace. Returns keys deleted."""
        patterns = [self.locale_key("*", user), self.last_key("*", "*", user)]
        doomed = [key for pattern in patterns
                  async for key in self.r.scan_iter(match=pattern, count=1000)]
        return int(await self.r.delete(*doomed)) if doomed else 0

    async def locale(self, team: str, user: str) -> str | None:
        raw = await self.r.get(self.locale_key(team, user))
        return None if raw is None else _s(raw)

    async def set_locale(self, team: str, user: str, locale: str, ttl: int) -> None:
        await self.r.set(self.locale_key(team, user), locale, ex=ttl)
