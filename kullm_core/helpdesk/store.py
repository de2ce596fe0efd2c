"""Helpdesk records in Redis: finished replies (`Exchange`), ratings (`Feedback`) and
hand-offs to a person (`Escalation`). Everything holding a person's data lives as long as the
history (`history.retention_hours`) and is indexed per user, so /forget removes it."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import WatchError

from kullm_core.helpdesk.scripts import RATE_LUA, RECORD_EXCHANGE_LUA
from kullm_core.keys import STATS_SAMPLES, STATS_TTL_S, Keys, utc_day
from kullm_core.limits import PLATFORM_TAGS
from kullm_core.limits import user_id as qualified_user
from kullm_core.redis_text import as_str
from kullm_core.wire import (
    ConversationRef,
    Escalation,
    Exchange,
    Feedback,
    Rating,
    UserRef,
)

log = logging.getLogger(__name__)


def asker_of(conv: ConversationRef, user: UserRef) -> str:
    """The qualified id of a user in a conversation (`slack:T1:U1`, `tg:42`)."""
    return qualified_user(user, conv.workspace)


class HelpdeskStore:
    """Exchanges, feedback and escalations, shared by every adapter replica."""

    def __init__(self, redis: Redis, keys: Keys, retention_s: float) -> None:
        self.r = redis
        self.keys = keys
        self.retention_ms = int(retention_s * 1000)
        self._record = redis.register_script(RECORD_EXCHANGE_LUA)
        self._rate = redis.register_script(RATE_LUA)

    # -- exchanges ---------------------------------------------------------------------------

    async def record(self, ex: Exchange) -> bool:
        """Store a finished reply and count it; False when it was recorded already."""
        day, k = utc_day(ex.asked_at), self.keys
        first = "" if ex.first_visible_s < 0 else f"{ex.first_visible_s:.3f}"
        done = await self._record(
            keys=[k.exchange(ex.job_id), k.stats(day), k.stats_ttfv(day, ex.channel),
                  k.stats_users(day, ex.channel), k.helpdesk_user(ex.user.platform, ex.user.id)],
            args=[ex.dumps(), self.retention_ms, ex.channel, ex.outcome, ex.prompt_tokens,
                  ex.completion_tokens, first, ex.asker, STATS_TTL_S, STATS_SAMPLES])
        return bool(done)

    async def exchange(self, job_id: str) -> Exchange | None:
        raw = await self.r.get(self.keys.exchange(job_id))
        return Exchange.model_validate_json(raw) if raw else None

    async def exchanges(self) -> AsyncIterator[Exchange]:
        """Every stored exchange (for `kullm export`), in no particular order."""
        async for key in self.r.scan_iter(match=self.keys.exchange("*"), count=500):
            raw = await self.r.get(key)
            if raw:
                yield Exchange.model_validate_json(raw)

    # -- feedback ----------------------------------------------------------------------------

    async def rate(self, job_id: str, rater: UserRef, workspace: str,
                   rating: Rating) -> tuple[Exchange, Rating | None] | None:
        """`rater` rates the answer of `job_id` (their earlier rating is replaced, its comment
        kept when the rating stays). Returns the exchange and the rating replaced, or None
        when the answer is gone (forgotten or expired)."""
        ex = await self.exchange(job_id)
        if ex is None:
            return None
        who = qualified_user(rater, workspace)
        old = await self.feedback_of(job_id, who)
        comment = old.comment if old is not None and old.rating == rating else ""
        fb = Feedback(job_id=job_id, rater=who, rating=rating, comment=comment)
        k = self.keys
        before = await self._rate(
            keys=[k.exchange(job_id), k.feedback(job_id), k.stats(utc_day(ex.asked_at)),
                  k.helpdesk_user(rater.platform, rater.id)],
            args=[who, fb.dumps(), rating, ex.channel, self.retention_ms, STATS_TTL_S])
        if before is None:
            return None
        replaced = as_str(before)
        return ex, (replaced if replaced in ("up", "down") else None)  # type: ignore[return-value]

    async def comment(self, job_id: str, rater: UserRef, workspace: str, text: str) -> bool:
        """Add a comment to the rater's rating of `job_id` (False: no rating, or gone)."""
        who = qualified_user(rater, workspace)
        key = self.keys.feedback(job_id)
        async with self.r.pipeline(transaction=True) as pipe:
            for _ in range(5):
                try:
                    await pipe.watch(key)
                    raw = await pipe.hget(key, who)
                    if not raw or not await self.r.exists(self.keys.exchange(job_id)):
                        return False
                    fb = Feedback.model_validate_json(raw)
                    pipe.multi()
                    pipe.hset(key, who, fb.model_copy(update={"comment": text[:2000],
                                                              "at": time.time()}).dumps())
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        return False

    async def feedback_of(self, job_id: str, rater: str) -> Feedback | None:
        raw = await self.r.hget(self.keys.feedback(job_id), rater)  # type: ignore[misc]
        return Feedback.model_validate_json(raw) if raw else None

    async def feedback(self, job_id: str) -> list[Feedback]:
        raw = await self.r.hvals(self.keys.feedback(job_id))  # type: ignore[misc]
        return sorted((Feedback.model_validate_json(v) for v in raw), key=lambda f: f.at)

    # -- escalations -------------------------------------------------------------------------

    async def escalation(self, conv: ConversationRef) -> Escalation | None:
        return await self.escalation_by_id(Escalation.id_for(conv))

    async def escalation_by_id(self, escalation_id: str) -> Escalation | None:
        raw = await self.r.get(self.keys.escalation(escalation_id))
        return Escalation.model_validate_json(raw) if raw else None

    async def open_escalation(self, esc: Escalation, asker: UserRef) -> tuple[Escalation, bool]:
        """Open `esc` (asked by `asker`) unless the conversation has an open one. Returns the
        open escalation and whether this call opened it."""
        key = self.keys.escalation(esc.id)
        async with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw:
                        now = Escalation.model_validate_json(raw)
                        if now.state == "open":
                            return now, False
                    pipe.multi()
                    pipe.set(key, esc.dumps(), px=self.retention_ms)
                    self._count(pipe, esc.channel, "escalations", esc.opened_at)
                    index = self.keys.helpdesk_user(asker.platform, asker.id)
                    pipe.sadd(index, key)
                    pipe.pexpire(index, self.retention_ms)
                    await pipe.execute()
                    return esc, True
                except WatchError:
                    continue

    async def set_shown(self, escalation_id: str, shown: dict[str, object]) -> None:
        """Remember where the platform shows the hand-off (`Escalation.shown`)."""
        await self._update(self.keys.escalation(escalation_id), lambda _e: True,
                           {"shown": shown}, None)

    async def note_message(self, conv: ConversationRef, author: str) -> Escalation | None:
        """Someone (`author`, qualified) wrote in `conv`: the first person other than the
        asker to write in an open escalation marks the time to the first human reply."""
        key = self.keys.escalation(Escalation.id_for(conv))
        return await self._update(key, lambda e: e.state == "open" and not e.first_human_at
                                  and author != e.asker, {"first_human_at": time.time()},
                                  "first")

    async def resolve(self, escalation_id: str, resolver: str) -> Escalation | None:
        """Close an open escalation; None when there is none open."""
        return await self._update(self.keys.escalation(escalation_id),
                                  lambda e: e.state == "open",
                                  {"state": "resolved", "resolved_at": time.time(),
                                   "resolver": resolver}, "resolved")

    async def _update(self, key: str, when: object, update: dict[str, object],
                      what: str | None) -> Escalation | None:
        """Change an escalation (`when` it qualifies); `what` names the duration sample to
        count (`first`, `resolved`; None: none)."""
        async with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if not raw:
                        return None
                    esc = Escalation.model_validate_json(raw)
                    if not when(esc):  # type: ignore[operator]
                        return None
                    new = esc.model_copy(update=update)
                    pipe.multi()
                    pipe.set(key, new.dumps(), keepttl=True)
                    if what is None:
                        await pipe.execute()
                        return new
                    at = float(update.get("first_human_at") or update.get("resolved_at")
                               or time.time())  # type: ignore[arg-type]
                    day, k = utc_day(esc.opened_at), self.keys
                    samples = k.stats_solve(day, esc.channel, what)
                    pipe.rpush(samples, f"{at - esc.opened_at:.3f}")
                    pipe.ltrim(samples, -STATS_SAMPLES, -1)
                    pipe.expire(samples, STATS_TTL_S)
                    if what == "resolved":
                        self._count(pipe, esc.channel, "resolved", esc.opened_at)
                    await pipe.execute()
                    return new
                except WatchError:
                    continue

    def _count(self, pipe: object, channel: str, metric: str, at: float) -> None:
        key = self.keys.stats(utc_day(at))
        pipe.hincrby(key, f"{channel}|{metric}", 1)  # type: ignore[attr-defined]
        pipe.expire(key, STATS_TTL_S)  # type: ignore[attr-defined]

    # -- /forget -----------------------------------------------------------------------------

    async def forget_user(self, platform: str, user: str) -> int:
        """Remove every helpdesk record of the user: the exchanges they asked (and the
        ratings on them), their ratings of others' answers, their escalations. Counts in the
        statistics stay (no text, no id). Returns the records removed."""
        index = self.keys.helpdesk_user(platform, user)
        members = [as_str(m) for m in await self.r.smembers(index)]  # type: ignore[misc]
        fb_prefix, ex_prefix = self.keys.feedback(""), self.keys.exchange("")
        tag = f"{PLATFORM_TAGS.get(platform, platform)}:"
        removed = 0
        for key in members:
            if key.startswith(fb_prefix):
                # Their rating of someone else's answer: only their field goes (the field is
                # the qualified id, which on Slack names the workspace too).
                fields = [f for f in map(as_str, await self.r.hkeys(key))  # type: ignore[misc]
                          if f.startswith(tag) and f.endswith(f":{user}")]
                if fields:
                    removed += int(await self.r.hdel(key, *fields))  # type: ignore[misc]
                continue
            extra = [self.keys.feedback(key[len(ex_prefix):])] if key.startswith(ex_prefix) else []
            removed += int(await self.r.delete(key, *extra))
        await self.r.delete(index)
        log.info("forget: %d helpdesk record(s) of a %s user removed", removed, platform)
        return removed
