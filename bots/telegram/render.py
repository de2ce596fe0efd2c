"""From the model's Markdown to what Telegram shows: entities for the final message, plain
text while streaming and whenever Telegram refuses the formatting.

Rendering uses telegramify-markdown (maintained, and it emits entities with UTF-16 offsets,
so nothing has to be escaped for a parse mode and a stray `*` cannot break a message).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import telegramify_markdown
from telegram import MessageEntity

from bots.telegram.split import (
    MAX_MESSAGE,
    Entity,
    MessagePart,
    split_markdown,
    split_text,
    utf16_len,
)

log = logging.getLogger(__name__)

_NOTE_ROOM = 2  # the blank line before a note


def render_markdown(markdown: str) -> MessagePart:
    """Markdown as Telegram text plus entities; the plain text when conversion fails."""
    try:
        text, entities = telegramify_markdown.convert(markdown)
    except Exception:  # a converter bug must not cost the user the answer
        log.warning("markdown conversion failed; sending plain text", exc_info=True)
        return MessagePart(markdown)
    if not text.strip():
        return MessagePart(markdown)
    return MessagePart(
        text,
        tuple(
            Entity(e.type, e.offset, e.length, e.url, e.language, e.custom_emoji_id)
            for e in entities
        ),
    )


def _with_note(pieces: list[MessagePart], note: str) -> list[MessagePart]:
    if not note:
        return pieces
    if not pieces:
        return [MessagePart(note)]
    return [*pieces[:-1], pieces[-1].with_note(note)]


def _limit(note: str, limit: int) -> int:
    return limit - (utf16_len(note) + _NOTE_ROOM if note else 0)


def final_pieces(markdown: str, note: str = "", limit: int = MAX_MESSAGE) -> list[MessagePart]:
    """The finished reply as formatted messages, `note` (a finish mark) closing the last."""
    rendered = render_markdown(markdown)
    pieces = split_text(rendered.text, _limit(note, limit), rendered.entities)
    return _with_note(pieces, note)


def plain_pieces(markdown: str, note: str = "", limit: int = MAX_MESSAGE) -> list[MessagePart]:
    """The reply as plain text messages (streaming, and the fallback when formatting is
    refused): exactly the model's text, cut at the same kind of boundaries."""
    pieces = [MessagePart(p) for p in split_markdown(markdown, _limit(note, limit))]
    return _with_note(pieces, note)


def to_telegram(entities: Sequence[Entity]) -> list[MessageEntity] | None:
    if not entities:
        return None
    return [
        MessageEntity(
            type=e.type, offset=e.offset, length=e.length, url=e.url, language=e.language,
            custom_emoji_id=e.custom_emoji_id,
        )
        for e in entities
    ]
