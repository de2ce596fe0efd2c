"""From the model's Markdown to what Telegram shows: formatted text (entities) while the
reply streams and when it is finished; plain text only where Telegram refuses the formatting.

Rendering uses telegramify-markdown (maintained, and it emits entities with UTF-16 offsets,
so nothing has to be escaped for a parse mode and a stray `*` cannot break a message).

Streaming follows the library's own streaming helpers (`telegramify_markdown.stream`
`DraftStream`/`EditStream` in entity mode): every draft or edit is `convert()` of the whole
text so far, the same call that renders the finished reply, so what was shown formatted stays
formatted and the end brings no jump. Their scheduler (`StreamCore`, its own timers and
sends) is not used: every call goes through the one per-chat outbox and the shared budget.

Hand-written here, `close_open_markup`: telegramify-markdown has no helper that closes the
spans a partial text has opened, so `convert("a **bol")` shows the raw `**` until the
closing one arrives. Before rendering an interim text we close the inline spans still open
in its last block (`**`, `*`, `__`, `_`, `~~`, inline code), hide a delimiter or a line that
opens nothing yet (a bare `-`, `#`, `` ` ``...), and show a link still being written as its
label. It only ever adds closers the model is about to write: if the parser does not take
them, the text is rendered as it is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import telegramify_markdown
from telegram import MessageEntity

from bots.telegram.split import (
    MAX_MESSAGE,
    Entity,
    MessagePart,
    open_block_start,
    split_markdown,
    split_text,
    utf16_len,
)

log = logging.getLogger(__name__)

_NOTE_ROOM = 2  # the blank line before a note
_LINK_SCHEMES = ("http://", "https://", "tg://", "ton://")
_INLINE = re.compile(r"\\[\s\S]|`+|\*\*|__|~~|\*|_|~")
"""An escape, or an inline delimiter run: code, strong, strikethrough, emphasis."""
_BARE_LAST_LINE = re.compile(r"(?:\A|\n)[ \t]*(?:[-*+=#>|`~]+|\d+[.)])?[ \t]*\Z")
"""A last line that is only the start of a list item, heading, quote, table or fence."""
_LINK_BEING_WRITTEN = re.compile(r"\[([^\[\]\n]*)(?:\](?:\([^)\s]*)?)?\Z")
"""`[label`, `[label]` or `[label](url` at the very end: shown as its label until done."""


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
            # Telegram refuses the whole message over a link it cannot open (a relative
            # `[x](docs/a.md)`): such a link shows as its text.
            if e.type != "text_link" or (e.url or "").lower().startswith(_LINK_SCHEMES)
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


def close_open_markup(markdown: str) -> str:
    """The reply so far as the Markdown it is becoming: the inline spans its last block
    opened closed, a delimiter or line that opens nothing yet hidden (see module doc)."""
    shown, closers = _closing(markdown)
    return shown + closers


def _closing(markdown: str) -> tuple[str, str]:
    """(the text to show, the closers of the spans it leaves open)."""
    text = markdown.rstrip()
    bare = _BARE_LAST_LINE.search(text)
    if bare is not None:
        text = text[: bare.start()].rstrip()
    start = open_block_start(text)
    if start is None:  # inside a fenced block: the parser shows it as code to the end
        return text, ""
    link = _LINK_BEING_WRITTEN.search(text, start)
    if link is not None:
        text = text[: link.start()] + link.group(1)
    end, closers = _open_spans(text, start)
    return (text[:end].rstrip() if closers else text[:end]), closers


def _open_spans(text: str, start: int) -> tuple[int, str]:
    """(where the shown text ends, the closers of the spans still open) for the block at
    `start`. Opening and closing follow CommonMark's flanking rules, a little stricter: a
    delimiter inside a word never opens (`2*3`, `snake_case`)."""
    stack: list[str] = []
    code: str | None = None
    for m in _INLINE.finditer(text, start):
        tok = m.group()
        if tok[0] == "\\":
            continue
        if tok[0] == "`" and code is not None:
            code = None if tok == code else code
            continue
        if code is not None:
            continue
        before = text[m.start() - 1] if m.start() > start else " "
        after = text[m.end()] if m.end() < len(text) else ""
        if not after:  # opens nothing yet (or closes): shown once the next text comes
            if stack and stack[-1] == tok and not before.isspace():
                stack.pop()
                continue
            return m.start(), "".join(reversed(stack))
        if tok[0] == "`":
            code = tok
        elif stack and stack[-1] == tok and not before.isspace():
            stack.pop()
        elif not after.isspace() and not before.isalnum():
            stack.append(tok)
    return len(text), (code or "") + "".join(reversed(stack))


def streaming_pieces(markdown: str, limit: int = MAX_MESSAGE) -> list[MessagePart]:
    """The reply so far as formatted messages, rendered as the finished reply will be."""
    shown, closers = _closing(markdown)
    pieces = final_pieces(shown + closers, limit=limit)
    if closers and pieces and pieces[-1].text.endswith(closers):
        return final_pieces(shown, limit=limit)  # the parser did not take the closers
    return pieces


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
