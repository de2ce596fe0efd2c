"""What the fake Telegram holds: chats, users and messages as their members see them, the calls
the bot made, and the flood limits it enforces."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

TOKEN = "123456:TEST-token"
BOT_ID = 123456
BOT_USERNAME = "kullm_test_bot"
# Methods that put or change a message on screen: they count against the flood limits.
COUNTED = frozenset({"sendMessage", "editMessageText", "sendMessageDraft"})


@dataclass(frozen=True)
class FakeLimits:
    chat_interval_s: float = 1.0
    group_limit: int = 20
    group_period_s: float = 60.0
    global_limit: int = 30
    global_period_s: float = 1.0


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    error: str = ""


@dataclass
class Chat:
    id: int
    type: str  # private | group | supergroup
    title: str = ""
    is_forum: bool = False

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.type == "private":
            out["first_name"] = self.title or "user"
        else:
            out["title"] = self.title or f"group {self.id}"
            if self.is_forum:
                out["is_forum"] = True
        return out


@dataclass(frozen=True)
class User:
    id: int
    first_name: str = "user"
    username: str = ""
    language_code: str = "ko"
    is_bot: bool = False

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        if self.username:
            out["username"] = self.username
        if self.language_code:
            out["language_code"] = self.language_code
        return out


BOT = User(BOT_ID, "KULLM3", BOT_USERNAME, "", is_bot=True)


@dataclass
class Msg:
    """A message in a chat, as its members see it now (plus its edit history)."""

    chat: Chat
    message_id: int
    sender: User
    text: str = ""
    entities: list[dict[str, Any]] = field(default_factory=list)
    thread_id: int | None = None
    reply_to: int | None = None
    reply_markup: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)
    formats: list[list[dict[str, Any]]] = field(default_factory=list)
    """The entities of each version."""
    deleted: bool = False
    update_id: int = 0
    date: int = field(default_factory=lambda: int(time.time()))

    @property
    def from_bot(self) -> bool:
        return self.sender.id == BOT_ID

    def json(self, msgs: dict[tuple[int, int], Msg], nested: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "message_id": self.message_id, "date": self.date, "chat": self.chat.json(),
            "from": self.sender.json(), **self.extra,
        }
        if self.text or not self.extra:
            out["text"] = self.text
        if self.entities:
            out["entities"] = self.entities
        if self.thread_id is not None:
            out["message_thread_id"] = self.thread_id
            out["is_topic_message"] = True
        if self.reply_markup and "inline_keyboard" in self.reply_markup:
            out["reply_markup"] = self.reply_markup  # a message shows only inline keyboards
        parent = msgs.get((self.chat.id, self.reply_to or 0))
        if nested and parent is not None:
            out["reply_to_message"] = parent.json(msgs, nested=False)
        return out
