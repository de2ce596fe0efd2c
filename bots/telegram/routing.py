"""Who a Telegram message is from, which conversation it belongs to, and whether a group
message speaks to the bot."""

from __future__ import annotations

import re

from telegram import Message, MessageEntity
from telegram import User as TgUser
from telegram.constants import ChatType

from kullm_core.texts import lang_of
from kullm_core.wire import ConversationRef, UserRef

PLATFORM = "telegram"
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\r?\n)+")


def is_private(msg: Message) -> bool:
    return msg.chat.type == ChatType.PRIVATE


def thread_of(msg: Message) -> int | None:
    """The forum topic (or private-chat topic) a message lives in; None outside topics."""
    return msg.message_thread_id if msg.is_topic_message else None


def user_ref(user: TgUser) -> UserRef:
    # `name` is matched against the username allowlist, so it must be the @username (which
    # Telegram guarantees unique), never the free-form display name.
    return UserRef(
        platform=PLATFORM, id=str(user.id), name=user.username or "",
        lang=lang_of(user.language_code),
    )


def conversation(msg: Message, user_id: int, group_scope: str) -> ConversationRef:
    """Private chats: the user's. Groups: per (group, topic, user), or per (group, topic)
    when `telegram.group_scope` is `group`."""
    thread = thread_of(msg)
    per_user = is_private(msg) or group_scope == "user"
    return ConversationRef(
        platform=PLATFORM,
        chat=str(msg.chat.id),
        thread=str(thread) if thread else "",
        user=str(user_id) if per_user else "",
        direct=is_private(msg),
    )


def source_id(msg: Message, bot_id: int) -> str:
    """The dedupe key of a user's message: message ids are unique within a chat, and two
    bots in one group see the same ids."""
    return f"tg:{bot_id}:{msg.chat.id}:{msg.message_id}"


def replies_to_bot(msg: Message, bot_id: int) -> bool:
    parent = msg.reply_to_message
    return (
        parent is not None
        and parent.from_user is not None
        and parent.from_user.id == bot_id
        and parent.forum_topic_created is None  # topic messages "reply" to the topic's start
    )


def _utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


def _span(text: str, offset: int, length: int) -> str:
    return _utf16(text)[2 * offset: 2 * (offset + length)].decode("utf-16-le", "replace")


def _index(text: str, utf16_offset: int) -> int:
    """The Python index of a UTF-16 offset (Telegram's entity offsets count UTF-16 units)."""
    units = 0
    for i, ch in enumerate(text):
        if units >= utf16_offset:
            return i
        units += 2 if ord(ch) > 0xFFFF else 1
    return len(text)


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """Remove UTF-16 (offset, length) spans (a mention, a command) from `text`, with the
    spaces that only joined them to the text: all of them after a span that starts a line,
    else one beside it. Every other space, tab and line break stays as the user typed it
    (pasted code and YAML must reach the model intact)."""
    for offset, length in sorted(spans, reverse=True):
        a, b = _index(text, offset), _index(text, offset + length)
        if a == 0 or text[a - 1] == "\n":
            while b < len(text) and text[b] in " \t":
                b += 1
        elif b < len(text) and text[b] in " \t":
            b += 1
        elif text[a - 1] in " \t":
            a -= 1
        text = text[:a] + text[b:]
    return text


def _trim(text: str) -> str:
    """Blank lines before the first line and whitespace after the last removed; the first
    line's indentation kept."""
    return _LEADING_BLANK_LINES.sub("", text).rstrip()


def addressed_text(msg: Message, bot_id: int, bot_username: str) -> str | None:
    """In a group: the question when the message mentions the bot or replies to it (the
    mention removed), None when it speaks to someone else."""
    text = msg.text or msg.caption or ""
    entities = msg.entities or msg.caption_entities or ()
    handle = f"@{bot_username}".lower()
    spans = []
    for ent in entities:
        mentions_us = (
            ent.type == MessageEntity.MENTION
            and _span(text, ent.offset, ent.length).lower() == handle
        ) or (ent.type == MessageEntity.TEXT_MENTION and ent.user is not None
              and ent.user.id == bot_id)
        if mentions_us:
            spans.append((ent.offset, ent.length))
    if not spans and not replies_to_bot(msg, bot_id):
        return None
    return _trim(_cut(text, spans))


def command_args(msg: Message) -> str:
    """The text after a leading /command (line breaks and indentation kept)."""
    text = msg.text or ""
    for ent in msg.entities or ():
        if ent.type == MessageEntity.BOT_COMMAND and ent.offset == 0:
            return _trim(_cut(text, [(0, ent.length)]))
    return _trim(text)
