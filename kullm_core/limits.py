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
from dataclasses import dataclass

from redis.asyncio import Redis

from kullm_core.keys import DAY_S, QUOTA_TTL_S, Keys, utc_day
from kullm_core.limits_scripts import ADMIT_LUA
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


def quota_owner(user: UserRef) -> str:
    """Whose counters a request spends: per platform user, whichever workspace they ask in
    (``platform:id``; the queue's commit adds the generated tokens to the same key)."""
    return f"{user.platform}:{user.id}"


class Limiter:
    """Who may ask, and how often. Counters live in Redis so every adapter replica agrees.

    `allowed` and `is_admin` are pure (no Redis): adapters call them before any other work,
    so a flood from someone not allowed costs almost nothing.
    """

    def __init__(self, redis: Redis, keys: Keys, settings: LimitSettings) -> None:
        self.r = redis
        self.keys = keys
        self.s = settings
        self.reservation_max_age_s = 6 * 3600.0
        """A reservation whose job never ended (dead-lettered) stops counting after this."""
        self._admit = redis.register_script(ADMIT_LUA)

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

    def owner(self, user: UserRef) -> str:
        return quota_owner(user)

    async def used_today(self, who: str, now: float | None = None) -> int:
        """Tokens `who` (`owner`) used today (UTC)."""
        return int(await self.r.get(self.keys.quota(who, utc_day(now))) or 0)

    async def daily_limit(self, who: str) -> int:
        """`who`'s daily token limit: an admin's per-user setting, else `daily_tokens`
        (0: unlimited)."""
        raw = await self.r.get(self.keys.user_quota(who))
        return int(raw) if raw is not None else self.s.daily_tokens

    async def set_daily_limit(self, who: str, limit: int | None) -> None:
        """An admin sets `who`'s daily limit (None: back to `daily_tokens`)."""
        if limit is None:
            await self.r.delete(self.keys.user_quota(who))
        else:
            await self.r.set(self.keys.user_quota(who), max(0, int(limit)))

    async def usage(self, user: UserRef, now: float | None = None) -> Usage:
        who, now = self.owner(user), time.time() if now is None else now
        window = self.keys.request_window(who)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.quota(who, utc_day(now)))
            pipe.zcount(window, int(now * 1000) - _WINDOW_MS, "+inf")
            used, requests = await pipe.execute()
        return Usage(int(used or 0), await self.daily_limit(who), int(requests),
                     self.s.requests_per_minute)

    async def admit(self, user: UserRef, job_id: str, estimate: int, *,
                    workspace: str = "", now: float | None = None) -> Admission:
        """Count one request in the moving minute and reserve up to `estimate` tokens of
        today's quota for `job_id`, in one atomic step: concurrent requests can never
        reserve more than is left. A job granted fewer tokens than `estimate` is generated
        with that many at most (`Admission.max_tokens`)."""
        if self.is_admin(user, workspace):
            return Admission(None, 0)
        now = time.time() if now is None else now
        who, day, k = self.owner(user), utc_day(now), self.keys
        status, a = await self._admit(
            keys=[k.request_window(who), k.quota(who, day), k.quota_reserved(who, day),
                  k.user_quota(who)],
            args=[int(now * 1000), _WINDOW_MS, self.s.requests_per_minute, self.s.daily_tokens,
                  max(1, estimate), job_id, k.done(""), int(self.reservation_max_age_s * 1000),
                  QUOTA_TTL_S])
        if status == 1:
            return Admission(ErrorEvent(kind="quota", params={
                "retry_after": DAY_S - int(now) % DAY_S, "limit": int(a)}), 0)
        if status == 2:
            return Admission(ErrorEvent(kind="rate_limited", params={"retry_after": int(a)}), 0)
        return Admission(None, int(a))

    async def release(self, user: UserRef, job_id: str, now: float | None = None) -> None:
        """Give back the reservation of a request that was not queued after all."""
        await self.r.hdel(self.keys.quota_reserved(self.owner(user), utc_day(now)), job_id)  # type: ignore[misc]


@dataclass(frozen=True)
class Admission:
    refusal: ErrorEvent | None
    max_tokens: int
    """Tokens reserved for the job (0: no quota applies)."""


@dataclass(frozen=True)
class Usage:
    used_today: int
    daily_limit: int
    """0: unlimited."""
    requests_last_minute: int
    requests_per_minute: int
    """0: unlimited."""


_WINDOW_MS = 60_000

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
