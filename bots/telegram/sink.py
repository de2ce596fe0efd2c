"""How one reply shows in Telegram: the `kullm_core.replies` sink of the Telegram adapter.

`Deliveries` says what to show and when; `TelegramSink` shows it through `ReplyView` (drafts
or edited messages, continued in further messages) and renders the final Markdown. The
record's `target` is ``{chat_id, thread_id, reply_to}``; its `shown` is
``{mode, draft_id, message_ids}``, so a restarted adapter edits the same messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from bots.telegram.keyboard import inline_keyboard
from bots.telegram.outbox import Outbox
from bots.telegram.render import close_open_markup, final_pieces, plain_pieces
from bots.telegram.split import MessagePart
from bots.telegram.texts import t
from bots.telegram.view import Placement, ReplyView
from kullm_core import metrics
from kullm_core.helpdesk.actions import Action
from kullm_core.replies import Save
from kullm_core.wire import ReplyRecord

log = logging.getLogger(__name__)


class TelegramPlatform:
    """The adapter's `ChatPlatform`: one `TelegramSink` per reply, one outbox for all."""

    namespace = "tg"

    def __init__(self, outbox: Outbox, *, use_drafts: bool = True,
                 typing_every_s: float = 4.0) -> None:
        self.outbox = outbox
        self.use_drafts = use_drafts
        self.typing_every_s = typing_every_s
        self.drafts_refused: set[int] = set()
        """Chats where `sendMessageDraft` was refused: their replies edit messages."""

    def sink(self, record: ReplyRecord, save: Save) -> TelegramSink:
        return TelegramSink(self, record, save)

    def placement(self, record: ReplyRecord) -> Placement:
        target, shown = record.target, record.shown
        chat_id = int(target["chat_id"])
        # Private chats (positive ids) stream as native drafts; groups edit a message.
        drafts = chat_id > 0 and self.use_drafts and chat_id not in self.drafts_refused
        return Placement(
            job_id=record.job_id, chat_id=chat_id, thread_id=target.get("thread_id"),
            reply_to=target.get("reply_to"), created_at=record.created_at,
            mode=shown.get("mode") or ("draft" if drafts else "edit"),
            draft_id=int(shown.get("draft_id") or int(record.job_id[:7], 16) + 1),
            message_ids=[int(m) for m in shown.get("message_ids", [])],
        )


class TelegramSink:
    """One reply in one chat (see module doc). `typing…` shows until the first text does."""

    def __init__(self, platform: TelegramPlatform, record: ReplyRecord, save: Save) -> None:
        self.platform = platform
        self.lang = record.user.lang
        self.place = platform.placement(record)
        self.view = ReplyView(platform.outbox, self.place, save, platform.drafts_refused)
        self._typing: asyncio.Task[None] | None = None
        if not self.view.visible.is_set():
            self._typing = asyncio.create_task(self._type(), name=f"tg-typing-{record.job_id}")

    async def _type(self) -> None:
        every = self.platform.typing_every_s
        while not self.view.visible.is_set():
            await self.platform.outbox.chat_action(self.place.chat_id, self.place.thread_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.view.visible.wait(), every)

    async def waiting(self, position: int, *, behind: bool = False) -> None:
        text = t("queued_behind", self.lang) if behind else t("queued", self.lang,
                                                               position=position)
        await self.view.status(text)

    async def warming(self) -> None:
        await self.view.status(t("warming_up", self.lang))

    async def progress(self, text: str) -> None:
        await self.view.interim(text)

    async def finish(self, text: str, note: str, actions: Sequence[Action] = ()) -> bool:
        if text.strip():
            pieces, plain = final_pieces(text, note), plain_pieces(text, note)
        else:
            pieces = plain = [MessagePart(note or t("empty_reply", self.lang))]
        # The helpdesk's buttons go on the last part only: streaming and splitting are
        # untouched, and they ride on the call that shows that part.
        if not await self.view.final(pieces, plain, inline_keyboard(actions)):
            return False
        self.view.when_settled(lambda edits: metrics.delivered("telegram", edits))
        log.info("job %s: shown in chat %s in %d message(s)", self.place.job_id,
                 self.place.chat_id, len(self.place.message_ids))
        return True

    async def fail(self, text: str, message: str) -> None:
        if text.strip():  # formatted as it streamed: the spans it left open closed
            closed = close_open_markup(text)
            pieces, plain = final_pieces(closed, message), plain_pieces(text, message)
        else:
            pieces = plain = [MessagePart(message)]
        await self.view.final(pieces, plain)
        log.info("job %s: error shown in chat %s", self.place.job_id, self.place.chat_id)

    async def notice(self, text: str) -> None:
        await self.view.final([MessagePart(text)], [MessagePart(text)])

    def state(self) -> dict[str, Any]:
        p = self.place
        return {"mode": p.mode, "draft_id": p.draft_id, "message_ids": list(p.message_ids)}

    async def close(self) -> None:
        if self._typing is not None:
            self._typing.cancel()
            await asyncio.gather(self._typing, return_exceptions=True)
