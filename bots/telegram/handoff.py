"""What a hand-off to a person looks like in Telegram: the link back to the conversation and
the responders tagged in the text.

Links: a supergroup (or channel) message is `https://t.me/c/<id without -100>/<message>`
(`…/<topic>/<message>` inside a forum topic), only openable by its members; a public group's
`https://t.me/<username>/<message>`; a private chat links to the asker (`tg://user?id=`);
a basic group has no message links, so the hand-off names the group instead.

Responders are Telegram user ids (tagged with a `tg://user?id=` text link, which notifies
them like a mention) or usernames (a plain `@username` mention).
"""

from __future__ import annotations

from collections.abc import Sequence

from telegram import Chat, MessageEntity
from telegram.constants import ChatType


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def message_link(chat: Chat, message_id: int, thread: int | None = None) -> str:
    """A link to a message for the hand-off (see module doc; '' for a basic group)."""
    if chat.type == ChatType.PRIVATE:
        return f"tg://user?id={chat.id}"
    if chat.username:
        return f"https://t.me/{chat.username}/{message_id}"
    raw = str(chat.id)
    if chat.type in (ChatType.SUPERGROUP, ChatType.CHANNEL) and raw.startswith("-100"):
        topic = f"{thread}/" if thread else ""
        return f"https://t.me/c/{raw[4:]}/{topic}{message_id}"
    return ""


def responder_labels(responders: Sequence[str],
                     word: str) -> list[tuple[str, MessageEntity]]:
    """Each responder's label in the text (`word`, numbered when there are several, for an
    id; `@name` for a username) and the entity that tags them (offsets 0)."""
    out: list[tuple[str, MessageEntity]] = []
    ids = [r for r in responders if r]
    for n, who in enumerate(ids, 1):
        if who.lstrip("-").isdigit():
            label = word + (str(n) if len(ids) > 1 else "")
            out.append((label, MessageEntity(MessageEntity.TEXT_LINK, 0, utf16_len(label),
                                             url=f"tg://user?id={who}")))
        else:
            label = "@" + who.lstrip("@")
            out.append((label, MessageEntity(MessageEntity.MENTION, 0, utf16_len(label))))
    return out


def tagged(text_before: str, labels: list[tuple[str, MessageEntity]]) -> tuple[str,
                                                                             list[MessageEntity]]:
    """The responders' labels joined by spaces, and their entities shifted to follow
    `text_before` (the text of the hand-off before the labels)."""
    joined, entities, at = [], [], utf16_len(text_before)
    for label, ent in labels:
        entities.append(MessageEntity(ent.type, at, ent.length, url=ent.url, user=ent.user))
        joined.append(label)
        at += utf16_len(label) + 1
    return " ".join(joined), entities


def handoff_entities(text: str, mentions: str, entities: list[MessageEntity],
                     after: str) -> list[MessageEntity]:
    """`entities` (computed as if `mentions` began at offset 0) placed where `mentions`
    stands in `text`, searched after `after` (the asker's name, which comes first)."""
    if not mentions:
        return []
    start = text.find(mentions, text.find(after) + len(after) if after in text else 0)
    if start < 0:
        return []
    shift = utf16_len(text[:start])
    return [MessageEntity(e.type, e.offset + shift, e.length, url=e.url, user=e.user)
            for e in entities]
