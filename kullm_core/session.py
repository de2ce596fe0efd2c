"""Answering one job: history, prompt, generation, coalesced deltas, the exactly-once commit.

Everything around the engine lives here: timing, usage, stop strings, timeouts,
cancellation and the history write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from kullm_core import logctx, metrics
from kullm_core.engine.base import Engine, GenerationRequest, SamplingParams
from kullm_core.errors import UserFacingError
from kullm_core.prompt import PromptBuilder
from kullm_core.queue import ClaimedJob, RedisJobQueue
from kullm_core.redis_checks import REDIS_TROUBLE, RedisGuard
from kullm_core.settings import Settings
from kullm_core.store import RedisConversationStore
from kullm_core.wire import DeltaEvent, DoneEvent, ErrorEvent, StartedEvent, Timings, Turn

log = logging.getLogger(__name__)

T = TypeVar("T")


def stop_cut(text: str, stops: tuple[str, ...]) -> tuple[int | None, int]:
    """(index where a stop string starts or None, length of text safe to show now).

    Text that could be the start of a stop string is held back until it is decided.
    """
    if not stops:
        return None, len(text)
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if hits:
        return min(hits), min(hits)
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return None, len(text) - hold


def _time_tokens(tokens: int, last: float) -> float:
    """Per-token latency: the time since the previous output, over its tokens (the first
    output is the first-token latency, counted on its own)."""
    now = time.monotonic()
    if last and tokens:
        metrics.observe_tokens(now - last, tokens)
    return now if tokens else last


@dataclass
class Outcome:
    text: str
    tokens: int
    finish: str
    first_token_s: float


class JobSession:
    """Runs one delivery to its end. Created by the worker, one per job."""

    def __init__(
        self, d: ClaimedJob, *, settings: Settings, engine: Engine, queue: RedisJobQueue,
        store: RedisConversationStore, prompt: PromptBuilder, worker_id: str,
        guard: RedisGuard | None = None,
    ) -> None:
        self.d = d
        self.job = d.job
        self.s = settings
        self.engine = engine
        self.queue = queue
        self.store = store
        self.prompt = prompt
        self.worker_id = worker_id
        self.request_id = f"{d.job.id}:{d.attempt}"
        self.abandoned = False
        self.guard = guard or RedisGuard(f"worker {worker_id}")
        self._delta_retry_at = 0.0
        self._delta_tries = 0

    async def _io(self, op: Callable[[], Awaitable[T]], doing: str) -> T:
        """A Redis call retried through outages (until abandoned or `job_timeout_s`)."""
        return await self.guard.call(
            op, f"job {self.job.id}: {doing}", give_up=lambda: self.abandoned,
            budget_s=self.s.queue.job_timeout_s,
        )

    def cancel(self) -> None:
        self.engine.cancel(self.request_id)

    def abandon(self) -> None:
        """Shutdown: stop without answering; the job is handed back to another worker."""
        self.abandoned = True
        self.cancel()

    async def run(self) -> None:
        job, started = self.job, time.time()
        conv = job.conversation
        logctx.bind(job_id=job.id, conversation=conv.key, platform=conv.platform)
        queue_ms = max(0.0, (started - job.created_at) * 1000)
        # first: marks the job as begun (an attempt, even if this process dies before
        # `started`; see JobConsumer._never_started) and lets /stop find it
        await self._io(lambda: self.queue.mark_active(job), "marking active")
        try:
            if await self._io(lambda: self.queue.is_cancelled(job.id), "checking cancel"):
                await self._commit(Outcome("", 0, "cancelled", 0.0), 0, queue_ms, started)
                return
            history = await self._io(lambda: self.store.history(job.conversation), "history")
            if job.replace_last and history:
                history = history[:-1]
            speaker = (job.user.id, job.user.name)
            built = await asyncio.to_thread(self.prompt.build, history, job.text, speaker,
                                            job.context)
        except UserFacingError as exc:
            log.info("job %s: refused (%s: %s)", job.id, exc.kind, exc)
            refusal = ErrorEvent(kind=exc.kind, params=exc.params)  # type: ignore[arg-type]
            await self._io(lambda: self.queue.fail(self.d, refusal), "refusing")
            metrics.JOBS.labels(result=exc.kind).inc()
            return
        start = StartedEvent(
            attempt=self.d.attempt, worker=self.worker_id, prompt_tokens=built.tokens,
            dropped_turns=built.dropped_turns,
        )
        await self._io(lambda: self.queue.emit(job.id, start), "starting")
        g = self.s.generation
        room = min(g.max_new_tokens, g.context_window - built.tokens)
        if job.max_tokens:  # what the asker's quota reserved for this answer
            room = min(room, job.max_tokens)
        params = SamplingParams.from_settings(g, max_new_tokens=room)
        request = GenerationRequest(self.request_id, built.ids, built.messages, params)
        outcome = await self._generate(request, started)
        await self._commit(outcome, built.tokens, queue_ms, started)

    async def _generate(self, request: GenerationRequest, started: float) -> Outcome:
        stops = request.params.stop_strings
        coalesce = self.s.queue.coalesce_ms / 1000
        deadline = asyncio.get_running_loop().time() + self.s.queue.job_timeout_s
        text, sent, tokens, finish = "", 0, 0, "stop"
        first_token_s, last_flush, last_out = 0.0, 0.0, 0.0
        stream = self.engine.generate(request)
        try:
            async with asyncio.timeout_at(deadline):
                async for out in stream:
                    tokens += out.tokens
                    last_out = _time_tokens(out.tokens, last_out)
                    if out.text:
                        if not first_token_s:
                            first_token_s = time.time() - started
                        text += out.text
                        cut, safe = stop_cut(text, stops)
                        if cut is not None:
                            text, finish = text[:cut], "stop_string"
                            self.cancel()
                            break
                        now = time.monotonic()
                        due = safe > sent and (not sent or now - last_flush >= coalesce)
                        if due and await self._delta(text[sent:safe]):
                            sent, last_flush = safe, now
                    if out.finish_reason:
                        finish = out.finish_reason
                        break
        except TimeoutError:
            log.warning("job %s: timed out after %.0f s", self.job.id, self.s.queue.job_timeout_s)
            self.cancel()
            finish = "timeout"
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        if len(text) > sent:
            last = DeltaEvent(text=text[sent:], attempt=self.d.attempt)
            await self._io(lambda: self.queue.emit(self.job.id, last), "streaming")
        return Outcome(text, tokens, finish, first_token_s)

    async def _delta(self, piece: str) -> bool:
        """Write a delta if Redis takes it; during an outage keep generating and send the
        text with a later delta (the `done` event carries it all anyway)."""
        if time.monotonic() < self._delta_retry_at:
            return False
        try:
            await self.queue.emit(self.job.id, DeltaEvent(text=piece, attempt=self.d.attempt))
        except REDIS_TROUBLE as exc:
            self._delta_tries += 1
            delay = self.guard.failed(exc, f"job {self.job.id}: streaming", self._delta_tries)
            self._delta_retry_at = time.monotonic() + delay
            return False
        self._delta_tries = 0
        self.guard.ok(wrote=True)
        return True

    async def _commit(
        self, o: Outcome, prompt_tokens: int, queue_ms: float, started: float
    ) -> None:
        job = self.job
        if self.abandoned:
            log.info("job %s: abandoned at shutdown, not answered here", job.id)
            return
        total_ms = (time.time() - started) * 1000
        done = DoneEvent(
            text=o.text, finish_reason=o.finish, prompt_tokens=prompt_tokens,  # type: ignore[arg-type]
            completion_tokens=o.tokens, attempt=self.d.attempt,
            timings=Timings(queue_ms=queue_ms, first_token_ms=o.first_token_s * 1000,
                            total_ms=total_ms),
        )
        turn = None
        if o.text.strip():
            turn = Turn(job_id=job.id, user_id=job.user.id, user_name=job.user.name,
                        user=job.text, assistant=o.text, finish_reason=o.finish)
        committed = await self._io(
            lambda: self.queue.commit(self.d, turn, done, o.tokens), "committing"
        )
        metrics.JOBS.labels(result=o.finish).inc()
        metrics.TOKENS.inc(o.tokens)
        metrics.PROMPT_TOKENS.inc(prompt_tokens)
        if o.first_token_s:
            metrics.FIRST_TOKEN.observe(o.first_token_s)
        log.info(
            "job %s: %s, %d+%d tokens, first token %.0f ms, total %.0f ms%s",
            job.id, o.finish, prompt_tokens, o.tokens, o.first_token_s * 1000, total_ms,
            "" if committed else " (already answered elsewhere; not stored again)",
        )
