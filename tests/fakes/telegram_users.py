"""The users' side of the fake Telegram: the chats and messages it holds (and every call the
bot made), what users do (post, mention, send a sticker or photo, press a button) and what they
see (the bot's messages, the replies to a message, toasts). `TelegramUsers` holds all of the
fake's state; `telegram_methods`, `telegram_updates` and `telegram_api` build on it."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from typing import Any

from aiohttp import web

from tests.fakes.telegram_markup import buttons
from tests.fakes.telegram_model import (
    BOT_USERNAME,
    COUNTED,
    TOKEN,
    Call,
    Chat,
    FakeLimits,
    Msg,
    User,
)


class TelegramUsers:
    """The fake's state and the users' side of it."""

    def __init__(self, limits: FakeLimits | None = None, token: str = TOKEN) -> None:
        self.limits = limits or FakeLimits()
        self.token = token
        self.chats: dict[int, Chat] = {}
        self.msgs: dict[tuple[int, int], Msg] = {}
        self._next_id: dict[int, int] = defaultdict(int)
        self.updates: list[dict[str, Any]] = []
        self._again: list[dict[str, Any]] = []
        self._next_update = 1
        self.confirmed = 0
        self.calls: list[Call] = []
        self.violations: list[Call] = []
        self.drafts: dict[tuple[int, int], list[str]] = defaultdict(list)
        self.draft_formats: dict[tuple[int, int], list[list[dict[str, Any]]]] = defaultdict(list)
        """The entities of each draft in `drafts`."""
        self.actions: list[tuple[int, str, float]] = []
        self.commands: dict[str, list[dict[str, str]]] = {}
        self.answered_callbacks: list[dict[str, Any]] = []
        self.callback_queries: set[str] = set()
        # Fault injection.
        self.reject_entities = False
        self.drafts_supported = True
        self.gateway_errors = 0
        """Answer this many counted calls with 502 Bad Gateway (a proxy hiccup)."""
        self.forced_429: dict[int, deque[int]] = defaultdict(deque)
        # Flood accounting: receive times of counted calls.
        self._per_chat: dict[int, deque[float]] = defaultdict(deque)
        self._global: deque[float] = deque()
        self._blocked_until: dict[int, float] = {}
        self.webhook: dict[str, Any] | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.port = 0

    # -- users' side -----------------------------------------------------------------------

    def chat(self, chat_id: int, type_: str = "", title: str = "", forum: bool = False) -> Chat:
        if chat_id not in self.chats:
            kind = type_ or ("private" if chat_id > 0 else "supergroup")
            self.chats[chat_id] = Chat(chat_id, kind, title, forum)
        return self.chats[chat_id]

    def _new_msg(self, chat: Chat, sender: User, **kw: Any) -> Msg:
        self._next_id[chat.id] += 1
        msg = Msg(chat, self._next_id[chat.id], sender, **kw)
        self.msgs[(chat.id, msg.message_id)] = msg
        return msg

    async def user_message(
        self, chat_id: int, user: User, text: str = "", *, reply_to: int | None = None,
        thread_id: int | None = None, entities: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None, kind: str = "message",
    ) -> Msg:
        """A user posts (or, with kind='edited_message', edits) a message; queues its update."""
        chat = self.chat(chat_id, title=user.first_name if chat_id > 0 else "")
        msg = self._new_msg(chat, user, text=text, entities=list(entities or []),
                            thread_id=thread_id, reply_to=reply_to, extra=dict(extra or {}))
        msg.update_id = await self.push_update({kind: msg.json(self.msgs)})
        return msg

    async def send_text(self, chat_id: int, user: User, text: str, **kw: Any) -> Msg:
        return await self.user_message(chat_id, user, text, **kw)

    async def mention(self, chat_id: int, user: User, text: str, **kw: Any) -> Msg:
        """`@bot text` with the mention entity Telegram would add."""
        full = f"@{BOT_USERNAME} {text}"
        ent = {"type": "mention", "offset": 0, "length": len(BOT_USERNAME) + 1}
        return await self.user_message(chat_id, user, full, entities=[ent], **kw)

    async def command(self, chat_id: int, user: User, text: str, **kw: Any) -> Msg:
        name = text.split()[0]
        ent = {"type": "bot_command", "offset": 0, "length": len(name)}
        return await self.user_message(chat_id, user, text, entities=[ent], **kw)

    async def send_sticker(self, chat_id: int, user: User, **kw: Any) -> Msg:
        sticker = {"file_id": "CAAC-sticker", "file_unique_id": "AgAD", "type": "regular",
                   "width": 512, "height": 512, "is_animated": False, "is_video": False,
                   "emoji": "😀"}
        return await self.user_message(chat_id, user, extra={"sticker": sticker}, **kw)

    async def send_photo(self, chat_id: int, user: User, caption: str = "", **kw: Any) -> Msg:
        photo = [{"file_id": "AgAC-photo", "file_unique_id": "AQAD", "width": 90, "height": 90}]
        extra: dict[str, Any] = {"photo": photo}
        if caption:
            extra["caption"] = caption
        return await self.user_message(chat_id, user, extra=extra, **kw)

    async def press_button(self, msg: Msg, user: User, data: str) -> str:
        """`user` presses a button with `data` under `msg` (any data: a forged or stale
        press too); returns the callback query's id."""
        query_id = f"cq{self._next_update}"
        self.callback_queries.add(query_id)
        await self.push_update({"callback_query": {
            "id": query_id, "from": user.json(), "chat_instance": str(msg.chat.id),
            "message": msg.json(self.msgs), "data": data,
        }})
        return query_id

    async def press(self, msg: Msg, user: User, label: str) -> str:
        """`user` presses the button labelled `label` on `msg` as it shows now."""
        data = next((d for text, d in buttons(msg.reply_markup) if text == label), None)
        if data is None:
            raise AssertionError(f"no button {label!r} on message {msg.message_id}: "
                                 f"{buttons(msg.reply_markup)}")
        return await self.press_button(msg, user, data)

    def toast(self, query_id: str) -> dict[str, Any] | None:
        """The bot's answerCallbackQuery to a press (None: not answered yet)."""
        return next((a for a in self.answered_callbacks
                     if a.get("callback_query_id") == query_id), None)

    async def push_update(self, body: dict[str, Any]) -> int:
        update = {"update_id": self._next_update, **body}
        self._next_update += 1
        self.updates.append(update)
        await self._notify()
        return int(update["update_id"])

    # -- what users see --------------------------------------------------------------------

    def bot_messages(self, chat_id: int, thread_id: int | None = None) -> list[Msg]:
        return [
            m for (c, _), m in sorted(self.msgs.items())
            if c == chat_id and m.from_bot and not m.deleted
            and (thread_id is None or m.thread_id == thread_id)
        ]

    def replies_to(self, chat_id: int, message_id: int) -> list[Msg]:
        """The bot's visible messages answering one user message: the one replying to it
        and the continuations chained to that one."""
        out: list[Msg] = []
        want = message_id
        for m in self.bot_messages(chat_id):
            if m.reply_to == want:
                out.append(m)
                want = m.message_id
        return out

    def counted_calls(self, chat_id: int | None = None) -> list[Call]:
        return [
            c for c in self.calls if c.method in COUNTED and not c.error.startswith("429")
            and (chat_id is None or int(c.params.get("chat_id", 0)) == chat_id)
        ]

    async def wait_for(self, predicate: Any, within: float = 30.0) -> None:
        """Wait until `predicate()` holds (checked after every call and every user action)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), within)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
