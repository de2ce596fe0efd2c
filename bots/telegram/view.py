"""The Telegram messages that show one reply, kept in step with its text.

The text is formatted while it streams (`render.streaming_pieces`), rendered as the finished
reply will be; once Telegram refuses an interim formatting the rest of the stream is plain.

Draft mode (private chats): the growing text is a native draft (`sendMessageDraft`) and the
finished reply is sent as real messages. Edit mode (groups, or where drafts are refused): a
first message is sent as soon as there is text and then edited as the text grows. Replies
longer than one message continue in further messages, each replying to the one before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Literal

from telegram import Bot, InlineKeyboardMarkup, LinkPreviewOptions, ReplyParameters
from telegram.error import BadRequest, EndPointNotFound

from bots.telegram.keyboard import markup_key
from bots.telegram.outbox import Outbox, OutboxOp, SendResult
from bots.telegram.render import plain_pieces, streaming_pieces, to_telegram
from bots.telegram.split import MessagePart
from kullm_core import metrics

log = logging.getLogger(__name__)

_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
_FORMAT_REFUSED = ("can't parse entities", "message is too long")
_GONE = ("message to edit not found", "message can't be edited")


@dataclass
class Placement:
    """Where one reply goes (from `ReplyRecord.target`) and the messages showing it so far
    (`ReplyRecord.shown`, saved after each new message)."""

    job_id: str
    chat_id: int
    thread_id: int | None = None
    reply_to: int | None = None
    """The user's message the reply answers."""
    created_at: float = 0.0
    mode: Literal["draft", "edit"] = "edit"
    draft_id: int = 0
    message_ids: list[int] = field(default_factory=list)
    """The bot's messages showing this reply, in order."""


def _fingerprint(piece: MessagePart, markup: InlineKeyboardMarkup | None) -> Hashable:
    """What a message shows: its text, formatting and buttons (an edit that only adds the
    buttons is not skipped as unchanged)."""
    return (piece.text, piece.entities, markup_key(markup))


class ReplyView:
    """Shows one reply. Methods are serialized; `visible` is set once any text is on screen."""

    def __init__(
        self,
        outbox: Outbox,
        rec: Placement,
        save: Callable[[], Awaitable[None]],
        drafts_refused: set[int],
    ) -> None:
        self.outbox = outbox
        self.rec = rec
        self._save = save
        self._drafts_refused = drafts_refused
        self._shown: dict[str, Hashable] = {}
        self._lock = asyncio.Lock()
        self.visible = asyncio.Event()
        if rec.message_ids:
            self.visible.set()
        self.edits = 0
        """Edits and drafts that changed what the user sees (`kullm_adapter_edits_per_reply`)."""
        self._texting = False
        self._timed = bool(rec.message_ids)  # a resumed reply was first shown by another run
        self._unsettled = 0  # fire-and-forget calls not answered yet
        self._on_settled: Callable[[int], None] | None = None
        self._plain = False
        """Telegram refused an interim's formatting: stream the rest as plain text."""

    @property
    def drafting(self) -> bool:
        return self.rec.mode == "draft" and self.rec.chat_id not in self._drafts_refused

    # -- what the delivery calls -----------------------------------------------------------

    async def status(self, text: str) -> None:
        """A placeholder (waiting in line, queue full) that the reply will replace."""
        async with self._lock:
            if self.rec.mode == "draft":
                self.rec.mode = "edit"  # the placeholder message becomes the reply
            await self._show([MessagePart(text)], must=False)

    async def interim(self, markdown: str) -> None:
        """The reply so far, formatted: frozen parts as messages, the tail as a draft
        (draft mode) or as an edited message."""
        async with self._lock:
            pieces = plain_pieces(markdown) if self._plain else streaming_pieces(markdown)
            if not pieces:
                return
            self._texting = True
            if self.drafting:
                shown = await self._show(pieces[:-1], must=False, trim=False)
                if shown is not None:
                    self._draft(pieces[-1])
            else:
                shown = await self._show(pieces, must=False, trim=False)
            if shown is None:
                self._refused_formatting()

    def _refused_formatting(self) -> None:
        if not self._plain:
            log.info("job %s: interim formatting refused; streaming plain text",
                     self.rec.job_id)
        self._plain = True

    async def final(self, pieces: list[MessagePart], plain: list[MessagePart],
                    markup: InlineKeyboardMarkup | None = None) -> bool:
        """Show the finished reply; `plain` when Telegram refuses the formatting. `markup`
        (the helpdesk's buttons) rides on the call that shows the last part, so it costs no
        call of its own when that part is new or changed. Returns False when it could not
        be shown at all."""
        async with self._lock:
            self._texting = True
            # A streamed draft still waiting must not land after the finished message.
            self.outbox.discard(self.rec.chat_id, f"d{self.rec.draft_id}")
            result = await self._show(pieces, must=True, markup=markup)
            if result is None:
                log.info("job %s: formatting refused; sending plain text", self.rec.job_id)
                result = await self._show(plain, must=True, markup=markup)
            return bool(result)

    # -- reconciling messages with pieces --------------------------------------------------

    async def _show(self, pieces: list[MessagePart], must: bool, trim: bool = True,
                    markup: InlineKeyboardMarkup | None = None) -> bool | None:
        """Make message i show piece i (the last one with `markup`); extra messages are
        deleted when `trim`. None: Telegram refused the formatting. False: a piece could
        not be shown."""
        ok = True
        for i, piece in enumerate(pieces):
            keys = markup if i == len(pieces) - 1 else None
            if i < len(self.rec.message_ids):
                outcome = await self._edit(i, piece, must, keys)
            else:
                outcome = await self._send(piece, must, markup=keys)
            if piece.entities and outcome.refused(*_FORMAT_REFUSED):
                return None
            ok = ok and outcome.ok
        if trim and len(self.rec.message_ids) > len(pieces):
            extra = self.rec.message_ids[len(pieces):]
            del self.rec.message_ids[len(pieces):]
            await self._save()
            for mid in extra:
                await self.outbox.run(self._delete_op(mid))
        return ok

    async def _edit(self, i: int, piece: MessagePart, must: bool,
                    markup: InlineKeyboardMarkup | None = None) -> SendResult:
        mid = self.rec.message_ids[i]
        key, fp = f"m{mid}", _fingerprint(piece, markup)
        if self._shown.get(key) == fp:
            return SendResult(True, skipped=True)
        self._shown[key] = fp
        future = self.outbox.submit(self._edit_op(mid, piece, key, fp, must, markup))
        if not must:  # streaming: fire and forget, the outbox merges what piles up
            self._unsettled += 1
            future.add_done_callback(lambda f: self._forget_failed(key, fp, f))
            return SendResult(True)
        outcome = await future
        self._landed(outcome, edit=True)
        if not outcome.ok:
            self._shown.pop(key, None)
        if outcome.refused(*_GONE):  # deleted by someone: show the piece in a new message
            self.rec.message_ids.pop(i)
            return await self._send(piece, must, at=i, markup=markup)
        return outcome

    def _forget_failed(self, key: str, fp: Hashable, future: asyncio.Future[SendResult]) -> None:
        result = future.result()
        self._landed(result, edit=True, settles=True)
        if not result.ok and self._shown.get(key) == fp:
            self._shown.pop(key, None)
        if result.refused(*_FORMAT_REFUSED):
            self._refused_formatting()

    def when_settled(self, report: Callable[[int], None]) -> None:
        """Call `report(edits)` once no streamed call of this reply is still in the outbox
        (the final text may be on screen through an interim edit still in flight)."""
        self._on_settled = report
        self._report_if_settled()

    def _landed(self, outcome: SendResult, edit: bool, settles: bool = False) -> None:
        """A call was answered: count edits, time the reply's first text."""
        self._unsettled -= settles
        if outcome.ok and not outcome.skipped:
            self.edits += edit
            if self._texting and not self._timed:
                self._timed = True
                metrics.first_text("telegram", time.time() - self.rec.created_at)
        self._report_if_settled()

    def _report_if_settled(self) -> None:
        if self._on_settled is not None and self._unsettled <= 0:
            report, self._on_settled = self._on_settled, None
            report(self.edits)

    async def _send(self, piece: MessagePart, must: bool, at: int | None = None,
                    markup: InlineKeyboardMarkup | None = None) -> SendResult:
        ids = self.rec.message_ids
        at = len(ids) if at is None else at
        reply_to = ids[at - 1] if at > 0 else self.rec.reply_to
        priority = 0 if at == 0 else (1 if must else 2)
        outcome = await self.outbox.run(self._send_op(piece, reply_to, must, priority, markup))
        if outcome.ok and outcome.value is not None:
            mid = int(outcome.value.message_id)
            ids.insert(at, mid)
            self._shown[f"m{mid}"] = _fingerprint(piece, markup)
            await self._save()
            self.visible.set()
            self._landed(outcome, edit=False)
        return outcome

    def _draft(self, piece: MessagePart) -> None:
        key, fp = f"d{self.rec.draft_id}", (piece.text, piece.entities)
        if self._shown.get(key) == fp:
            return
        self._shown[key] = fp
        future = self.outbox.submit(self._draft_op(piece, key, fp))
        self._unsettled += 1
        future.add_done_callback(self._draft_done)

    def _draft_done(self, future: asyncio.Future[SendResult]) -> None:
        outcome = future.result()
        self._landed(outcome, edit=True, settles=True)
        if outcome.ok:
            self.visible.set()
        elif outcome.refused(*_FORMAT_REFUSED):
            self._shown.pop(f"d{self.rec.draft_id}", None)
            self._refused_formatting()
        elif isinstance(outcome.error, BadRequest | EndPointNotFound):
            log.info("chat %s: drafts refused (%s); editing messages instead",
                     self.rec.chat_id, outcome.error)
            self._drafts_refused.add(self.rec.chat_id)
            self.rec.mode = "edit"

    # -- the Bot API calls -----------------------------------------------------------------

    def _send_op(
        self, piece: MessagePart, reply_to: int | None, must: bool, priority: int,
        markup: InlineKeyboardMarkup | None = None,
    ) -> OutboxOp:
        rec = self.rec
        reply = ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None

        async def call(bot: Bot) -> object:
            return await bot.send_message(
                rec.chat_id, piece.text, entities=to_telegram(piece.entities),
                message_thread_id=rec.thread_id, reply_parameters=reply,
                link_preview_options=_NO_PREVIEW, reply_markup=markup,
            )

        return OutboxOp(rec.chat_id, call, "sendMessage", must=must, priority=priority)

    def _edit_op(
        self, mid: int, piece: MessagePart, key: str, fp: Hashable, must: bool,
        markup: InlineKeyboardMarkup | None = None,
    ) -> OutboxOp:
        chat_id = self.rec.chat_id

        async def call(bot: Bot) -> object:
            return await bot.edit_message_text(
                piece.text, chat_id=chat_id, message_id=mid,
                entities=to_telegram(piece.entities), link_preview_options=_NO_PREVIEW,
                reply_markup=markup,
            )

        return OutboxOp(chat_id, call, "editMessageText", key=key, fingerprint=fp, must=must,
                        priority=1 if must else 2)

    def _draft_op(self, piece: MessagePart, key: str, fp: Hashable) -> OutboxOp:
        rec = self.rec

        async def call(bot: Bot) -> object:
            return await bot.send_message_draft(
                rec.chat_id, rec.draft_id, piece.text, message_thread_id=rec.thread_id,
                entities=to_telegram(piece.entities),
            )

        first = not self.visible.is_set()
        return OutboxOp(rec.chat_id, call, "sendMessageDraft", key=key, fingerprint=fp,
                        priority=0 if first else 2)

    def _delete_op(self, mid: int) -> OutboxOp:
        chat_id = self.rec.chat_id

        async def call(bot: Bot) -> object:
            return await bot.delete_message(chat_id, mid)

        return OutboxOp(chat_id, call, "deleteMessage", must=True, priority=1)
