"""What an adapter (Telegram, Slack, terminal) uses: submit, follow, cancel, reset, forget.

Adapters never touch keys or streams directly; everything goes through `CoreClient`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from kullm_core.helpdesk.store import HelpdeskStore
from kullm_core.keys import CANCEL_TTL_S, USER_JOBS_TTL_S, Keys
from kullm_core.limits import Limiter
from kullm_core.queue import EnqueueResult, RedisJobQueue
from kullm_core.redis_text import as_str
from kullm_core.settings import Settings
from kullm_core.store import RedisConversationStore
from kullm_core.streams import ReplyStreams
from kullm_core.text_clean import clean_text
from kullm_core.wire import ConversationRef, ErrorEvent, Event, Job, Quoted, Turn, UserRef

log = logging.getLogger(__name__)

MAX_USER_TEXT = 16000
MAX_CONTEXT = 50
_SETTLE_S = 10.0

ForgetHook = Callable[[str, str], Awaitable[object]]
"""An adapter's own part of /forget: called with (platform, user id)."""


_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*(?:\r\n|\n|\r))+")


def trim(text: str) -> str:
    """Leading blank lines and trailing whitespace off; the first line's indentation kept
    (pasted code or YAML)."""
    return _LEADING_BLANK_LINES.sub("", text).rstrip() if text.strip() else ""


def _cleaned(context: list[Quoted]) -> list[Quoted]:
    out = []
    for q in context[-MAX_CONTEXT:]:
        text = trim(clean_text(q.text))[:MAX_USER_TEXT]
        if text:
            out.append(q.model_copy(update={"text": text}))
    return out


@dataclass(frozen=True)
class Submission:
    """Outcome of `submit`: follow `job_id` with `events` unless `error` is set."""

    job_id: str
    status: str
    """queued | duplicate | busy | rejected"""
    position: int = 0
    error: ErrorEvent | None = None


class CoreClient:
    """Facade over the queue, reply streams, store and limits for adapters."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.redis.prefix)
        self.queue = RedisJobQueue.from_settings(redis, settings)
        self.store = RedisConversationStore.from_settings(redis, settings)
        self.limiter = Limiter(redis, self.keys, settings.limits)
        self.helpdesk = HelpdeskStore(redis, self.keys, settings.history.retention_hours * 3600)
        self._forget_hooks: list[ForgetHook] = []

    async def __aenter__(self) -> CoreClient:
        await self.queue.ensure_group()
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def submit(
        self,
        conv: ConversationRef,
        user: UserRef,
        text: str,
        source_id: str,
        meta: dict[str, str] | None = None,
        *,
        replace_last: bool = False,
        check_limits: bool = True,
        context: list[Quoted] | None = None,
    ) -> Submission:
        """Queue a message for an answer. Idempotent on `source_id` (the platform message id).
        `context`: others' messages quoted into the prompt (cleaned like the text; at most
        `MAX_CONTEXT` of them, the newest, and `MAX_USER_TEXT` characters each)."""
        job_id = Job.id_for(source_id)
        text = trim(clean_text(text))
        if not text:
            return Submission(job_id, "rejected", error=ErrorEvent(kind="bad_input"))
        if len(text) > MAX_USER_TEXT:
            return Submission(
                job_id,
                "rejected",
                error=ErrorEvent(kind="too_long", params={"limit": MAX_USER_TEXT}),
            )
        max_tokens = 0
        if check_limits:
            admitted = await self.limiter.admit(
                user, job_id, self.settings.generation.max_new_tokens, workspace=conv.workspace)
            if admitted.refusal is not None:
                log.info("job %s: user %s:%s limited (%s)", job_id, user.platform, user.id,
                         admitted.refusal.kind)
                return Submission(job_id, "rejected", error=admitted.refusal)
            max_tokens = admitted.max_tokens
        job = Job(
            id=job_id,
            source_id=source_id,
            conversation=conv,
            user=user,
            text=text,
            replace_last=replace_last,
            meta=meta or {},
            context=_cleaned(context or []),
            max_tokens=max_tokens,
        )
        res: EnqueueResult = await self.queue.enqueue(job)
        if res.status != "queued" and max_tokens:
            await self.limiter.release(user, job_id)
        if res.status == "busy":
            log.warning("job %s: queue full (%d waiting)", job_id, res.position)
            return Submission(
                job_id, "busy", res.position,
                ErrorEvent(kind="busy", params={"waiting": res.position}),
            )
        if res.status == "queued":
            await self._index_job(user, res.job_id)
        log.info("job %s: %s for %s (position %d)", res.job_id, res.status, conv.key, res.position)
        return Submission(res.job_id, res.status, res.position)

    def events(
        self, job_id: str, last_id: str = "0-0", block_ms: int = 2000
    ) -> AsyncIterator[tuple[str, Event]]:
        """Reply events of a job, resumable from `last_id`, ending with done or error."""
        return self.queue.events(job_id, last_id, block_ms)

    def reply_streams(self, block_ms: int = 250) -> ReplyStreams:
        """One shared reader for many replies (use it when following more than a few)."""
        return ReplyStreams(self.redis, self.keys, block_ms)

    async def job_state(self, job_id: str, source_id: str) -> Literal["live", "gone", "never"]:
        """live: its reply stream exists or it is still queued; gone: answered and the reply
        stream expired (the text is in history); never: it was never enqueued."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.keys.reply(job_id))
            pipe.exists(self.keys.done(job_id))
            pipe.exists(self.keys.dedupe(source_id))
            reply, done, queued = await pipe.execute()
        if reply:
            return "live"
        if done:
            return "gone"
        return "live" if queued else "never"

    async def position(self, job_id: str) -> int:
        """Current place in line (1 = next to be taken); 0 once a worker has taken it."""
        return await self.queue.position(job_id)

    async def job_ahead(self, conv: ConversationRef, job_id: str) -> bool:
        """True if another unfinished job of this conversation comes before `job_id` (being
        answered, or queued earlier), whichever adapter replica submitted it."""
        return await self.queue.has_job_ahead(conv.key, job_id)

    async def cancel(self, conv: ConversationRef) -> str | None:
        """Stop the reply being generated in this conversation. Returns its job id."""
        raw = await self.redis.get(self.keys.active(conv.key))
        if not raw:
            return None
        job_id = as_str(raw)
        await self.cancel_job(job_id)
        return job_id

    async def cancel_job(self, job_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.cancel(job_id), "1", ex=CANCEL_TTL_S)
            pipe.publish(self.keys.cancel_channel, job_id)
            await pipe.execute()
        log.info("job %s: cancel requested", job_id)

    async def active_job(self, conv: ConversationRef) -> str | None:
        raw = await self.redis.get(self.keys.active(conv.key))
        return as_str(raw) or None

    async def retry(
        self, conv: ConversationRef, user: UserRef, source_id: str,
        meta: dict[str, str] | None = None,
    ) -> Submission | None:
        """Regenerate the last answer of a conversation (None when there is none)."""
        turns = await self.store.history(conv)
        if not turns:
            return None
        return await self.submit(
            conv, user, turns[-1].user, source_id, meta, replace_last=True
        )

    async def reset(self, conv: ConversationRef) -> bool:
        return await self.store.reset(conv)

    async def _index_job(self, user: UserRef, job_id: str) -> None:
        """Remember the user's job, so /forget finds its reply stream (and can stop it)."""
        key = self.keys.user_jobs(user.platform, user.id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(key, job_id)
            pipe.expire(key, USER_JOBS_TTL_S + self.settings.queue.reply_ttl_s)
            await pipe.execute()

    async def _settle(self, job_ids: list[str]) -> None:
        """Wait (bounded) until cancelled jobs have ended: a job stopped mid-reply stores the
        text written so far, and that must happen before the erasure, not after it."""

        async def _end(job_id: str) -> None:
            async for _ in self.events(job_id, block_ms=500):
                pass

        try:
            async with asyncio.timeout(_SETTLE_S):
                await asyncio.gather(*(_end(j) for j in job_ids))
        except TimeoutError:
            log.warning("forget: %d stopped job(s) still running after %.0f s", len(job_ids),
                        _SETTLE_S)

    def on_forget(self, hook: ForgetHook) -> None:
        """Add an adapter's own cleanup (its records holding the user's text) to `forget`."""
        self._forget_hooks.append(hook)

    async def forget(self, platform: str, user_id: str) -> int:
        """Erase everything stored of a user (see `ConversationStore.forget_user` for what is
        kept and why): their unanswered jobs are stopped first, so that no reply written
        after this brings their text back. Returns the turns removed."""
        raw = await self.redis.smembers(self.keys.user_jobs(platform, user_id))
        jobs = sorted(as_str(j) for j in raw)
        if jobs:
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in jobs:
                    pipe.exists(self.keys.done(job_id))
                done = await pipe.execute()
            running = [j for j, finished in zip(jobs, done, strict=True) if not finished]
            for job_id in running:
                await self.cancel_job(job_id)
            await self._settle(running)
        turns = await self.store.forget_user(platform, user_id, jobs)
        await self.helpdesk.forget_user(platform, user_id)
        for hook in self._forget_hooks:
            await hook(platform, user_id)
        return turns

    async def history(self, conv: ConversationRef) -> list[Turn]:
        return await self.store.history(conv)

    async def seen(self, platform: str, item_id: str) -> bool:
        """True if this platform update/event id was already handled (adapter-side dedupe)."""
        first = await self.redis.set(
            self.keys.seen(platform, item_id), "1", nx=True, ex=self.settings.queue.dedupe_ttl_s
        )
        return not first

    async def warming(self) -> bool:
        """True while a worker is still loading its model (`kullm serve` just started)."""
        return bool(await self.redis.exists(self.keys.warming))

    async def workers_alive(self) -> int:
        n = 0
        async for _ in self.redis.scan_iter(match=self.keys.worker_pattern(), count=100):
            n += 1
        return n
