"""The Slack adapter's own Redis state, all under `{redis.prefix}:slack:`.

| key                                   | type   | lifetime                                     |
|---------------------------------------|--------|----------------------------------------------|
| {p}:slack:thread:{team}:{chan}:{ts}   | string | history retention (the bot follows the thread) |
| {p}:slack:last:{team}:{chan}:{user}   | string | history retention (target of /kullm commands)  |
| {p}:slack:locale:{team}:{user}        | string | locale_ttl_s (at most LOCALE_RETRY_TTL_S when |
|                                       |        | users.info failed: asked again sooner)        |

Replies in flight (where each is shown, under a lease) are the core's reply records
(`kullm_core.replies`, keys `{p}:slack:rrec:*` / `rlease:*` / `rindex`), the send budget is
the core's (`{p}:slack:budget:*`). /forget drops a user's `locale` (their name) and `last`
keys.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from bots.slack.config import SlackTuning
from kullm_core.keys import Keys
from kullm_core.redis_text import as_str

log = logging.getLogger(__name__)

LOCALE_RETRY_TTL_S = 3600
"""A profile cached without users.info's answer (the call failed) is asked for again sooner."""

class SlackStore:
    """Small per-thread and per-user markers of the Slack adapter."""

    def __init__(self, redis: Redis, prefix: str, tuning: SlackTuning,
                 retention_s: float) -> None:
        self.r = redis
        self.p = Keys(prefix).adapter("slack")
        self.tuning = tuning
        self.retention_s = max(60, int(retention_s))

    # -- keys ------------------------------------------------------------------------------

    def thread_key(self, team: str, channel: str, thread: str) -> str:
        return f"{self.p}:thread:{team}:{channel}:{thread}"

    def last_key(self, team: str, channel: str, user: str) -> str:
        return f"{self.p}:last:{team}:{channel}:{user}"

    def locale_key(self, team: str, user: str) -> str:
        return f"{self.p}:locale:{team}:{user}"

    # -- conversation markers --------------------------------------------------------------

    async def join_thread(self, team: str, channel: str, thread: str) -> None:
        await self.r.set(self.thread_key(team, channel, thread), "1", ex=self.retention_s)

    async def in_thread(self, team: str, channel: str, thread: str) -> bool:
        return bool(await self.r.exists(self.thread_key(team, channel, thread)))

    async def set_last(self, team: str, channel: str, user: str, thread: str) -> None:
        await self.r.set(self.last_key(team, channel, user), thread or "-", ex=self.retention_s)

    async def last(self, team: str, channel: str, user: str) -> str | None:
        """The thread of the user's latest question in this channel ('' = DM top level)."""
        raw = as_str(await self.r.get(self.last_key(team, channel, user)))
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
        return None if raw is None else as_str(raw)

    async def set_locale(self, team: str, user: str, locale: str, ttl: int) -> None:
        await self.r.set(self.locale_key(team, user), locale, ex=ttl)
