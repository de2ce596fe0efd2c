"""Access lists, per-user request rate and daily token quota, shared by every platform."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from kullm_core.keys import Keys
from kullm_core.settings import LimitSettings
from kullm_core.wire import ErrorEvent, UserRef


class Limiter:
    """Who may ask, and how often. Counters live in Redis so every adapter replica agrees."""

    def __init__(self, redis: Redis, keys: Keys, settings: LimitSettings) -> None:
        self.r = redis
        self.keys = keys
        self.s = settings

    def is_admin(self, user: UserRef) -> bool:
        return user.id in self.s.admins or (bool(user.name) and user.name in self.s.admins)

    def allowed(self, user: UserRef, chat: str = "", workspace: str = "") -> bool:
        """Allowlists: an empty list lets everyone in. Admins always pass the user list."""
        s = self.s
        if s.allowed_workspaces and workspace and workspace not in s.allowed_workspaces:
            return False
        if s.allowed_chats and chat and chat not in s.allowed_chats:
            return False
        if not s.allowed_users or self.is_admin(user):
            return True
        names = {user.id, user.name, f"@{user.name}"} - {"", "@"}
        return bool(names & set(s.allowed_users))

    async def check(self, user: UserRef, now: float | None = None) -> ErrorEvent | None:
        """Count one request; return a refusal (with when to ask again) or None."""
        if self.is_admin(user):
            return None
        now = time.time() if now is None else now
        who = f"{user.platform}:{user.id}"
        if self.s.daily_tokens:
            day = time.strftime("%Y%m%d", time.gmtime(now))
            used = int(await self.r.get(self.keys.quota(who, day)) or 0)
            if used >= self.s.daily_tokens:
                wait = 86400 - int(now) % 86400
                return ErrorEvent(kind="quota", params={"retry_after": wait,
                                                        "limit": self.s.daily_tokens})
        if self.s.requests_per_minute:
            minute = int(now // 60)
            key = self.keys.rate(who, minute)
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, 120)
                count, _ = await pipe.execute()
            if int(count) > self.s.requests_per_minute:
                return ErrorEvent(kind="rate_limited",
                                  params={"retry_after": 60 - int(now) % 60})
        return None
