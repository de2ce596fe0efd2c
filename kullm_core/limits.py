"""Access lists, per-user request rate and daily token quota, shared by every platform; and
the refusal throttle that keeps a flood from costing one refusal per message.

Every id in the lists names its platform (see `LimitSettings`): a Telegram user is
`tg:<id>` or `tg:@username`, a Slack user `slack:<team>:<user>`, so a Telegram @username
that happens to spell a Slack admin's id matches nothing on Slack and is never an admin.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from kullm_core.keys import Keys
from kullm_core.settings import LimitSettings
from kullm_core.wire import ErrorEvent, UserRef

log = logging.getLogger(__name__)

PLATFORM_TAGS = {"telegram": "tg", "slack": "slack", "cli": "cli"}
"""`UserRef.platform` -> the tag that qualifies ids of that platform in the settings."""


def _tag(platform: str) -> str:
    return PLATFORM_TAGS.get(platform, platform)


def user_id(user: UserRef, workspace: str = "") -> str:
    """The qualified id of a user: `tg:123`, `slack:T1:U1`, `cli:name`."""
    tag = _tag(user.platform)
    return f"{tag}:{workspace}:{user.id}" if tag == "slack" else f"{tag}:{user.id}"


def user_names(user: UserRef, workspace: str = "") -> set[str]:
    """Every qualified form the user matches in `allowed_users`: the id, and on Telegram the
    @username (Telegram keeps usernames unique; matched case-insensitively)."""
    names = {user_id(user, workspace)}
    if user.platform == "telegram" and user.name:
        names.add(f"tg:@{user.name.lower()}")
    return names


def chat_id(platform: str, chat: str, workspace: str = "") -> str:
    """The qualified id of a chat: `tg:-100123`, `slack:T1:C1`."""
    tag = _tag(platform)
    return f"{tag}:{workspace}:{chat}" if tag == "slack" else f"{tag}:{chat}"


class Limiter:
    """Who may ask, and how often. Counters live in Redis so every adapter replica agrees.

    `allowed` and `is_admin` are pure (no Redis): adapters call them before any other work,
    so a flood from someone not allowed costs almost nothing.
    """

    def __init__(self, redis: Redis, keys: Keys, settings: LimitSettings) -> None:
        self.r = redis
        self.keys = keys
        self.s = settings

    def is_admin(self, user: UserRef, workspace: str = "") -> bool:
        """Admins are named by id only, never by a (changeable) username."""
        return user_id(user, workspace) in self.s.admins

    def allowed(self, user: UserRef, chat: str = "", workspace: str = "") -> bool:
        """Allowlists: an empty list lets everyone in. Admins always pass the user list.

        `chat` and `workspace` are the platform's own ids (a Telegram chat id, a Slack
        channel and team id); they are qualified here.
        """
        s = self.s
        space = f"slack:{workspace}" if _tag(user.platform) == "slack" else ""
        if s.allowed_workspaces and space and space not in s.allowed_workspaces:
            return False
        if s.allowed_chats and chat and chat_id(user.platform, chat, workspace) not in (
            s.allowed_chats
        ):
            return False
        if not s.allowed_users or self.is_admin(user, workspace):
            return True
        return not user_names(user, workspace).isdisjoint(s.allowed_users)

    async def used_today(self, who: str, now: float | None = None) -> int:
        """Tokens `who` (``platform:id``, the quota key's owner) used today (UTC)."""
        day = time.strftime("%Y%m%d", time.gmtime(time.time() if now is None else now))
        return int(await self.r.get(self.keys.quota(who, day)) or 0)

    async def check(
        self, user: UserRef, now: float | None = None, workspace: str = ""
    ) -> ErrorEvent | None:
        """Count one request; return a refusal (with when to ask again) or None."""
        if self.is_admin(user, workspace):
            return None
        now = time.time() if now is None else now
        # The counters' key is the queue's (its commit adds the generated tokens to the same
        # quota key): per platform user, whichever workspace they ask in.
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


_MAX_PLACES = 4096


class RefusalThrottle:
    """At most one refusal per place (a chat) per `interval_s`; later ones are dropped and
    counted, and the count is logged when the next refusal goes out.

    In memory, per adapter process: it saves outbound calls, so it needs no shared state.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._places: dict[str, tuple[float, int]] = {}
        self.dropped = 0

    def allow(self, place: str) -> bool:
        """True: send this refusal. False: drop it (one was sent here a moment ago)."""
        now = self.clock()
        until, dropped = self._places.get(place, (0.0, 0))
        if now < until:
            if not dropped:
                log.info("%s: further refusals dropped for %.0f s", place, until - now)
            self._places[place] = (until, dropped + 1)
            self.dropped += 1
            return False
        if dropped:
            log.info("%s: %d refusal(s) were dropped", place, dropped)
        if len(self._places) >= _MAX_PLACES:
            self._prune(now)
        self._places[place] = (now + self.interval_s, 0)
        return True

    def _prune(self, now: float) -> None:
        for key in [k for k, (until, _) in self._places.items() if until <= now]:
            del self._places[key]
        while len(self._places) >= _MAX_PLACES:  # all live: forget the oldest
            del self._places[next(iter(self._places))]
