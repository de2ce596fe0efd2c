"""Delivering one reply: submit the question, follow the job's reply stream, show it.

The reply stream is read from its start, so a delivery taken over after a restart rebuilds
the whole text and edits the messages it finds in its record: nothing lost, nothing doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from bots.telegram.outbox import Outbox
from bots.telegram.render import final_pieces, plain_pieces
from bots.telegram.split import Piece
from bots.telegram.state import DeliveryRecord, DeliveryRegistry
from bots.telegram.texts import t
from bots.telegram.tuning import Tuning
from bots.telegram.view import ReplyView
from kullm_core import metrics
from kullm_core.client import CoreClient
from kullm_core.limits import RefusalThrottle
from kullm_core.texts import error_text, finish_note
from kullm_core.wire import DoneEvent, ErrorEvent, Event

log = logging.getLogger(__name__)

SubmitResult = Literal["accepted", "busy", "refused"]


@dataclass
class Env:
    """What every delivery shares."""

    client: CoreClient
    outbox: Outbox
    registry: DeliveryRegistry
    tuning: Tuning
    drafts_refused: set[int] = field(default_factory=set)
    streams: CoreClient | None = None
    """Follows reply streams (its own connection pool); `client` when None."""
    refusals: RefusalThrottle = field(default_factory=lambda: RefusalThrottle(10.0))
    """One refusal per chat per interval (`limits.refusal_interval_s`), shared by all."""


class _Pump:
    """Pushes the growing text to the view, at most once per tick; the outbox merges the rest."""

    def __init__(self, view: ReplyView, tick: float) -> None:
        self.view = view
        self.tick = tick
        self._text = ""
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="tg-pump")

    def update(self, text: str) -> None:
        self._text = text
        self._changed.set()

    async def _loop(self) -> None:
        while True:
            await self._changed.wait()
            if self._closing.is_set():
                return
            self._changed.clear()
            await self.view.interim(self._text)
            try:
                await asyncio.wait_for(self._closing.wait(), self.tick)
                return
            except TimeoutError:
                pass

    async def close(self) -> None:
        """Stop after the update in progress (never cut a send whose message id we need)."""
        self._closing.set()
        self._changed.set()
        await self._task


class ReplyTask:
    """One reply on its way to a chat."""

    def __init__(self, env: Env, rec: DeliveryRecord, *, recovering: bool = False) -> None:
        self.env = env
        self.rec = rec
        self.job_id = rec.job_id
        self.recovering = recovering
        self.behind = False
        self.position = 0
        self._waiting_shown = False
        self.view = ReplyView(env.outbox, rec, self.save, env.drafts_refused)
        self._started = asyncio.Event()
        self._typing: asyncio.Task[None] | None = None
        self.answered = False
        """The job is over (done or error): the conversation is free for the next question."""
        self.refusal: ErrorEvent | None = None
        """Why the core refused the question (rate limit, quota...), once `submit_once` did."""
        self.finished = False

    @property
    def started(self) -> bool:
        return self._started.is_set()

    async def save(self) -> None:
        await self.env.registry.save(self.rec)

    def start_typing(self) -> None:
        if self._typing is None and not self.view.visible.is_set():
            self._typing = asyncio.create_task(self._type(), name=f"tg-typing-{self.job_id}")

    async def _type(self) -> None:
        """`typing…` from receipt until the first text is on screen."""
        every = self.env.tuning.typing_every_s
        while not self.view.visible.is_set():
            await self.env.outbox.chat_action(self.rec.chat_id, self.rec.thread_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.view.visible.wait(), every)

    # -- submitting ------------------------------------------------------------------------

    async def submit_once(self) -> SubmitResult:
        req, rec = self.rec.submit, self.rec
        if req is None:
            return "accepted"
        client = self.env.client
        if req.kind == "retry":
            sub = await client.retry(req.conv, req.user, req.source_id, req.meta)
            if sub is None:
                await self.notice(t("nothing_to_retry", rec.lang))
                return "refused"
        else:
            sub = await client.submit(req.conv, req.user, req.text, req.source_id, req.meta)
        if sub.status in ("queued", "duplicate"):
            self.position = sub.position
            rec.submit, rec.busy_since = None, 0.0
            await self.save()
            return "accepted"
        if sub.status == "busy":
            if not rec.busy_since:
                rec.busy_since = time.time()
                await self.save()
            await self.view.status(t("busy_waiting", rec.lang, waiting=sub.position))
            return "busy"
        err = self.refusal = sub.error or ErrorEvent(kind="internal")
        if self.env.refusals.allow(f"tg:{rec.chat_id}"):
            await self.notice(error_text(err, rec.lang))
        else:
            log.debug("job %s: refusal (%s) dropped: one was sent just now", self.job_id, err.kind)
        return "refused"

    async def _submit_until_accepted(self) -> bool:
        tuning = self.env.tuning
        while True:
            result = await self.submit_once()
            if result != "busy":
                return result == "accepted"
            if time.time() - self.rec.busy_since > tuning.busy_give_up_s:
                log.warning("job %s: queue still full; giving up", self.job_id)
                await self.notice(error_text(ErrorEvent(kind="busy", params={"waiting": "?"}),
                                             self.rec.lang))
                return False
            await asyncio.sleep(tuning.busy_retry_s)

    # -- following the reply ---------------------------------------------------------------

    async def run(self) -> None:
        self.start_typing()
        try:
            if self.rec.submit is not None and not await self._submit_until_accepted():
                self.finished = True
                return
            await self._follow()
            self.finished = True
        except TimeoutError:
            log.warning("job %s: no reply events for %.0f s; giving up", self.job_id,
                        self.env.tuning.idle_timeout_s)
            await self._fail(ErrorEvent(kind="timeout"), "")
            self.finished = True
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception:
            log.exception("job %s: delivery to chat %s failed", self.job_id, self.rec.chat_id)
            self.finished = True  # one apology, not a retry loop on every restart
            await self._fail(ErrorEvent(kind="internal"), "")
        finally:
            if self._typing is not None:
                self._typing.cancel()

    async def _follow(self) -> None:
        text, attempt = "", 0
        pump = _Pump(self.view, self.env.tuning.interim_tick_s)
        placeholder = asyncio.create_task(self._placeholder(), name=f"tg-wait-{self.job_id}")
        try:
            async for _, ev in self._events():
                if ev.type == "queued":
                    self.position = ev.position
                    if self._waiting_shown and not self.started:  # keep "#N" up to date
                        await self.view.status(t("queued", self.rec.lang, position=ev.position))
                elif ev.type == "started":
                    self._started.set()
                    if ev.attempt != attempt:  # a restarted job: the earlier text is void
                        attempt, text = ev.attempt, ""
                elif ev.type == "delta" and ev.attempt >= attempt:
                    if ev.attempt > attempt:
                        attempt, text = ev.attempt, ""
                    text += ev.text
                    pump.update(text)
                elif ev.type in ("done", "error"):
                    self.answered = True
                    self._started.set()
                    await placeholder
                    await pump.close()
                    if isinstance(ev, DoneEvent):
                        await self._finish(ev)
                    elif isinstance(ev, ErrorEvent):
                        await self._fail(ev, text)
                    return
        finally:
            self._started.set()
            await asyncio.gather(placeholder, return_exceptions=True)
            await pump.close()

    async def _placeholder(self) -> None:
        """Tell the user the question waits: at once when it is behind another reply in
        the same conversation, otherwise when no answer started within a moment."""
        if not self.behind:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._started.wait(), self.env.tuning.placeholder_delay_s)
        if self.started or (self.view.visible.is_set() and not self.behind):
            return
        self._waiting_shown = True
        if await self.env.client.warming():
            await self.view.status(t("warming_up", self.rec.lang))
        elif self.behind:
            await self.view.status(t("queued_behind", self.rec.lang))
        else:
            await self.view.status(t("queued", self.rec.lang, position=max(1, self.position)))

    async def _events(self) -> AsyncIterator[tuple[str, Event]]:
        idle = self.env.tuning.idle_timeout_s
        follower = self.env.streams or self.env.client
        stream = follower.events(self.job_id, "0-0").__aiter__()
        try:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        item = await anext(stream)
                except StopAsyncIteration:
                    return
                yield item
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    # -- the end ---------------------------------------------------------------------------

    async def _finish(self, done: DoneEvent) -> None:
        lang = self.rec.lang
        note = finish_note(done.finish_reason, lang)
        if done.text.strip():
            pieces = final_pieces(done.text, note)
            plain = plain_pieces(done.text, note)
        else:
            pieces = plain = [Piece(note or t("empty_reply", lang))]
        if not await self.view.final(pieces, plain):
            log.error("job %s: the reply could not be shown in chat %s", self.job_id,
                      self.rec.chat_id)
        else:
            self.view.when_settled(lambda edits: metrics.delivered("telegram", edits))
        log.info("job %s: delivered to chat %s in %d message(s) (%s)", self.job_id,
                 self.rec.chat_id, len(self.rec.message_ids), done.finish_reason)

    async def _fail(self, err: ErrorEvent, text: str) -> None:
        msg = error_text(err, self.rec.lang)
        pieces = plain_pieces(text, msg) if text.strip() else [Piece(msg)]
        await self.view.final(pieces, pieces)
        log.info("job %s: error %s shown in chat %s", self.job_id, err.kind, self.rec.chat_id)

    async def notice(self, text: str) -> None:
        """A one-message answer instead of a reply (refusal, limit, nothing to retry)."""
        await self.view.final([Piece(text)], [Piece(text)])
