"""One reply on its way to a chat: submit, follow the job's reply events, drive the sink.

The reply stream is read from its start, so a reply resumed after a restart rebuilds the
whole text and its sink edits the messages it finds in `ReplyRecord.shown`: nothing lost,
nothing doubled. Every Redis call of the core is retried with bounded backoff (the shared
reader resumes from its last entry on its own), so a Redis blip delays a reply and never
turns it into an error; what still escapes hands the reply back to the orphan scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from redis.exceptions import RedisError

from kullm_core.client import CoreClient, Submission
from kullm_core.helpdesk.actions import answer_actions
from kullm_core.helpdesk.service import channel_of
from kullm_core.helpdesk.store import asker_of
from kullm_core.limits import RefusalThrottle
from kullm_core.redis_checks import RedisGuard
from kullm_core.replies.fold import Change, ReplyFold
from kullm_core.replies.registry import ReplyRegistry
from kullm_core.replies.sink import ReplySink, Save
from kullm_core.replies.tuning import DeliveryTuning
from kullm_core.streams import ReplyStreams
from kullm_core.texts import error_text, finish_note, t
from kullm_core.wire import ErrorEvent, Event, Exchange, ReplyOutcome, ReplyRecord

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class DeliveryContext:
    """What every reply of one `Deliveries` shares."""

    client: CoreClient
    registry: ReplyRegistry
    streams: ReplyStreams
    tuning: DeliveryTuning
    guard: RedisGuard
    """One outage log (a warning, then one recovery line) for all of them."""
    refusals: RefusalThrottle = field(default_factory=lambda: RefusalThrottle(10.0))


class _Pump:
    """Hands the growing text to the sink at most once per tick, never two calls at once."""

    def __init__(self, sink: ReplySink, lock: asyncio.Lock, tick_s: float) -> None:
        self.sink, self.lock, self.tick_s = sink, lock, tick_s
        self._text = ""
        self.first_shown_at = 0.0
        """When the sink was first handed some text (the user sees it about then)."""
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="reply-pump")

    def update(self, text: str) -> None:
        self._text = text
        self._changed.set()

    async def _loop(self) -> None:
        while True:
            await self._changed.wait()
            if self._closing.is_set():
                return
            self._changed.clear()
            async with self.lock:
                await self.sink.progress(self._text)
            if self._text and not self.first_shown_at:
                self.first_shown_at = time.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.tick_s)
                return

    async def close(self) -> None:
        """Stop after the call in progress (never cut a send whose message id is needed)."""
        self._closing.set()
        self._changed.set()
        await self._task


class ReplyRun:
    """Delivers one reply; `run()` returns once the user has the answer (or was told why
    not). Cancelled, it leaves the record for whoever resumes it."""

    def __init__(self, ctx: DeliveryContext, rec: ReplyRecord,
                 make_sink: Callable[[ReplyRecord, Save], ReplySink], *,
                 resumed: bool = False, behind: bool = False) -> None:
        self.ctx = ctx
        self.rec = rec
        self.sink = make_sink(rec, self.save)
        self.resumed = resumed
        self.behind = behind
        self.fold = ReplyFold(rec.user.lang)
        self.started = asyncio.Event()
        self._lock = asyncio.Lock()
        self._waiting_shown = False
        self._stop_waiting = asyncio.Event()
        self._busy = False
        """The last submit found the queue full: wait before the next one."""
        self.refusal: ErrorEvent | None = None
        """Why the core refused the question (rate limit, quota...), once it did."""
        self._first_shown_at = 0.0

    @property
    def job_id(self) -> str:
        return self.rec.job_id

    @property
    def answered(self) -> bool:
        """The job is over (or the question never got in): the conversation is free."""
        return self.fold.over

    def stop_waiting(self) -> None:
        """/stop while the question waits for room in a full queue: it is dropped, and the
        user sees it stopped."""
        self._stop_waiting.set()

    async def save(self) -> None:
        """The sink's `save`: store what it shows now."""
        self.rec = self.rec.model_copy(update={
            "shown": self.sink.state(), "attempt": self.fold.attempt,
            "last_id": self.fold.last_id})
        await self._redis("saving the record", lambda: self.ctx.registry.save(self.rec))

    async def _redis(self, what: str, fn: Callable[[], Awaitable[T]], wrote: bool = True) -> T:
        """`fn()`, tried again with bounded backoff while Redis is in trouble."""
        return await self.ctx.guard.call(fn, f"job {self.job_id}: {what}", wrote=wrote)

    async def run(self) -> None:
        try:
            if self.rec.state == "submitting" and not await self._submit():
                return
            await self._follow()
        except (asyncio.CancelledError, RedisError, OSError):
            raise
        except Exception:
            log.exception("job %s: delivery failed", self.job_id)
            with contextlib.suppress(Exception):
                await self._record("failed")
            with contextlib.suppress(Exception):
                await self.sink.fail(self.fold.text, error_text(ErrorEvent(kind="internal"),
                                                                self.fold.lang))
        finally:
            with contextlib.suppress(Exception):
                await self.sink.close()

    # -- submitting ------------------------------------------------------------------------

    async def _submit_once(self) -> Submission | None:
        rec, client = self.rec, self.ctx.client
        req = rec.request
        if req is not None and req.kind == "retry":
            return await client.retry(rec.conversation, rec.user, rec.source_id, req.meta)
        if req is None:
            return await client.submit(rec.conversation, rec.user, "", rec.source_id, {})
        return await client.submit(rec.conversation, rec.user, req.text, rec.source_id, req.meta,
                                   context=req.context)

    async def submit(self) -> bool | None:
        """One try: True accepted, False over (the user was told why), None the queue is
        full (the user sees their place; `run` tries again). `Deliveries.deliver` makes the
        first try before it returns, so messages of a conversation are queued in order."""
        tuning, lang = self.ctx.tuning, self.fold.lang
        sub = await self._redis("submitting", self._submit_once)
        if sub is None:
            await self.sink.notice(t("nothing_to_retry", lang))
            return False
        if sub.status in ("queued", "duplicate"):
            self.fold.position = sub.position
            self.rec = self.rec.model_copy(update={"state": "following", "request": None,
                                                   "busy_since": 0.0})
            await self._redis("saving the record", lambda: self.ctx.registry.save(self.rec))
            return True
        if sub.status != "busy":
            return await self._refused(sub.error or ErrorEvent(kind="internal"))
        if not self.rec.busy_since:
            self.rec = self.rec.model_copy(update={"busy_since": time.time()})
            await self._redis("saving the record", lambda: self.ctx.registry.save(self.rec))
        elif time.time() - self.rec.busy_since > tuning.busy_give_up_s:
            log.warning("job %s: queue still full; giving up", self.job_id)
            await self._record("refused")
            await self.sink.notice(error_text(ErrorEvent(kind="busy", params={
                "waiting": sub.position}), lang))
            return False
        self._waiting_shown = self._busy = True
        await self.sink.waiting(sub.position + 1)
        return None

    async def _submit(self) -> bool:
        """Submit until accepted or over; /stop (`stop_waiting`) ends the wait."""
        while True:
            accepted = None if self._busy else await self.submit()
            self._busy = False
            if accepted is not None:
                return accepted
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_waiting.wait(), self.ctx.tuning.busy_retry_s)
                await self._record("stopped")
                await self.sink.finish("", finish_note("cancelled", self.fold.lang))
                return False

    async def _refused(self, err: ErrorEvent) -> bool:
        self.refusal = err
        await self._record("refused")
        place = f"{self.rec.conversation.platform}:{self.rec.conversation.chat}"
        if self.ctx.refusals.allow(place):
            await self.sink.notice(error_text(err, self.fold.lang))
        else:
            log.debug("job %s: refusal (%s) dropped: one was sent just now", self.job_id,
                      err.kind)
        return False

    # -- following -------------------------------------------------------------------------

    async def _follow(self) -> None:
        client = self.ctx.client
        if self.resumed:
            state = await self._redis("reading the job state",
                                      lambda: client.job_state(self.job_id, self.rec.source_id),
                                      wrote=False)
            if state != "live":
                await self._without_stream(state)
                return
        pump = _Pump(self.sink, self._lock, self.ctx.tuning.tick_s)
        placeholder = asyncio.create_task(self._placeholder(), name=f"reply-wait-{self.job_id}")
        try:
            gone = await self._consume(pump)
            self.started.set()
            await placeholder
            await pump.close()
            self._first_shown_at = pump.first_shown_at
            if gone is not None:
                await self._without_stream(gone)
            elif self.fold.phase == "done":
                await self._finish(self.fold.text, self.fold.note)
            else:
                await self._record("failed")
                await self.sink.fail(self.fold.text, self.fold.note)
        finally:
            self.started.set()
            placeholder.cancel()
            await asyncio.gather(placeholder, return_exceptions=True)
            await pump.close()

    async def _consume(self, pump: _Pump) -> str | None:
        """Fold the reply events until done/error. Returns the job's state instead when its
        reply stream is gone (expired while nobody followed it)."""
        tuning = self.ctx.tuning
        events: asyncio.Queue[tuple[str, Event] | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read(events), name=f"reply-read-{self.job_id}")
        silent = 0.0
        try:
            while not self.fold.over:
                try:
                    item = await asyncio.wait_for(events.get(), tuning.state_check_s)
                except TimeoutError:
                    silent += tuning.state_check_s
                    state = await self._redis("reading the job state", lambda: self.ctx.client
                                              .job_state(self.job_id, self.rec.source_id),
                                              wrote=False)
                    if state != "live":
                        return state
                    if silent >= tuning.idle_timeout_s:
                        log.warning("job %s: no reply events for %.0f s", self.job_id, silent)
                        self.fold.apply(ErrorEvent(kind="timeout"))
                    continue
                if item is None:
                    break
                silent = 0.0
                await self._apply(self.fold.apply(item[1], item[0]), pump)
            return None
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, out: asyncio.Queue[tuple[str, Event] | None]) -> None:
        async for item in self.ctx.streams.follow(self.job_id, "0-0"):
            out.put_nowait(item)
        out.put_nowait(None)

    async def _apply(self, change: Change | None, pump: _Pump) -> None:
        if change == "position" and self._waiting_shown and not self.started.is_set():
            async with self._lock:
                await self.sink.waiting(max(1, self.fold.position), behind=self.behind)
        elif change in ("started", "reset", "text"):
            self.started.set()
            if self.fold.text:
                pump.update(self.fold.text)

    async def _placeholder(self) -> None:
        """Tell the user the question waits: at once when it is behind another reply of the
        conversation, otherwise when no answer started within a moment."""
        if not self.behind:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.started.wait(), self.ctx.tuning.placeholder_delay_s)
        if self.started.is_set():
            return
        warming = await self._redis("reading the warming flag", self.ctx.client.warming,
                                    wrote=False)
        async with self._lock:
            if self.started.is_set():
                return
            self._waiting_shown = True
            if warming:
                await self.sink.warming()
            else:
                await self.sink.waiting(max(1, self.fold.position), behind=self.behind)

    async def _without_stream(self, state: str) -> None:
        """The reply stream expired (answered while no adapter followed it): the answer is in
        the history. 'never': the job was never queued."""
        lang = self.fold.lang
        if state == "gone":
            turns = await self._redis("reading the history",
                                      lambda: self.ctx.client.history(self.rec.conversation),
                                      wrote=False)
            for turn in reversed(turns):
                if turn.job_id == self.job_id:
                    self.fold.phase, self.fold.text = "done", turn.assistant
                    self.fold.finish_reason = turn.finish_reason
                    await self._finish(turn.assistant, finish_note(turn.finish_reason, lang))
                    return
        log.warning("job %s: reply stream gone and no answer stored (%s)", self.job_id, state)
        self.fold.phase = "failed"
        await self._record("failed")
        await self.sink.fail("", error_text(ErrorEvent(kind="failed"), lang))

    async def _finish(self, text: str, note: str) -> None:
        stopped = self.fold.finish_reason == "cancelled"
        await self._record("stopped" if stopped else "answered")
        actions = answer_actions(self.job_id, self.fold.lang,
                                 self.ctx.client.settings.helpdesk) if text else []
        if not await self.sink.finish(text, note, actions):
            log.error("job %s: the reply could not be shown", self.job_id)
        else:
            log.info("job %s: delivered (attempt %d)", self.job_id, self.fold.attempt)


    async def _record(self, outcome: ReplyOutcome) -> None:
        """Count the reply in the helpdesk's statistics (once, however often it is
        delivered), before the buttons that refer to it are shown."""
        rec, fold, now = self.rec, self.fold, time.time()
        shown = self._first_shown_at or (now if fold.text else 0.0)
        ex = Exchange(job_id=rec.job_id, conversation=rec.conversation, user=rec.user,
                      asker=asker_of(rec.conversation, rec.user),
                      channel=channel_of(rec.conversation), outcome=outcome,
                      finish_reason=fold.finish_reason or (fold.error.kind if fold.error else ""),
                      asked_at=rec.created_at, finished_at=now,
                      first_visible_s=max(0.0, shown - rec.created_at) if shown else -1.0,
                      prompt_tokens=fold.prompt_tokens, completion_tokens=fold.completion_tokens)
        try:
            await self._redis("recording the exchange",
                              lambda: self.ctx.client.helpdesk.record(ex))
        except Exception:
            log.exception("job %s: could not record the exchange", self.job_id)
