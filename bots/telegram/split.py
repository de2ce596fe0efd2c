"""Cut a reply into Telegram-sized messages at paragraph or sentence boundaries.

Telegram measures text (and entity offsets) in UTF-16 code units, so that is what `limit`
counts. A cut never falls inside a character (combining marks, joiners and Hangul jamo stay
with their base) nor inside a code block, unless the block alone is longer than a message:
then it is cut between its lines and each part stays a complete code block.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass, replace
from itertools import accumulate

MAX_MESSAGE = 4096

_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_LINE = re.compile(r"\n")
_SENTENCE = re.compile(r"[.!?。！？…](?=[\s\"'”’)\]]*\s)")
_SPACE = re.compile(r"[ \t]")
_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[^\n]*$", re.MULTILINE)
# Break levels, best first: paragraph, line, sentence, word.
_LEVELS = (_PARAGRAPH, _LINE, _SENTENCE, _SPACE)


@dataclass(frozen=True)
class Entity:
    """A Telegram message entity; `offset` and `length` in UTF-16 code units."""

    type: str
    offset: int
    length: int
    url: str | None = None
    language: str | None = None
    custom_emoji_id: str | None = None


@dataclass(frozen=True)
class MessagePart:
    """One message: its text and entities."""

    text: str
    entities: tuple[Entity, ...] = ()

    def with_note(self, note: str) -> MessagePart:
        return MessagePart(f"{self.text}\n\n{note}" if self.text else note, self.entities)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _offsets(text: str) -> list[int]:
    """UTF-16 offset of every Python index (one more entry than characters)."""
    return [0, *accumulate(2 if ord(c) > 0xFFFF else 1 for c in text)]


def _joins_previous(ch: str) -> bool:
    """True for characters that belong to the character before them."""
    code = ord(ch)
    return (
        unicodedata.combining(ch) != 0
        or ch in "\u200d\u200c"
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0x1F3FB <= code <= 0x1F3FF  # skin tones
        or 0xE0100 <= code <= 0xE01EF
        or 0x1160 <= code <= 0x11FF  # Hangul jamo vowels and finals
        or 0xD7B0 <= code <= 0xD7FF
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")
    )


def _safe_cut(text: str, pos: int, start: int) -> int:
    while pos > start + 1 and (_joins_previous(text[pos]) or text[pos - 1] == "\u200d"):
        pos -= 1
    return pos


def _fences(markdown: str) -> tuple[list[tuple[int, int]], re.Match[str] | None]:
    """Closed fenced code blocks, and the fence still open at the end (or None)."""
    spans: list[tuple[int, int]] = []
    opening: re.Match[str] | None = None
    for m in _FENCE.finditer(markdown):
        if opening is None:
            opening = m
        elif m.group(1)[0] == opening.group(1)[0] and len(m.group(1)) >= len(opening.group(1)):
            spans.append((opening.start(), m.end()))
            opening = None
    return spans, opening


def fenced_blocks(markdown: str) -> list[tuple[int, int]]:
    """Spans of fenced code blocks in Markdown (an unclosed fence runs to the end)."""
    spans, opening = _fences(markdown)
    if opening is not None:
        spans.append((opening.start(), len(markdown)))
    return spans


def open_block_start(markdown: str) -> int | None:
    """Where the Markdown's last block (text after the last blank line or code block) starts;
    None while a fenced code block is still open (streamed text inside code)."""
    spans, opening = _fences(markdown)
    if opening is not None:
        return None
    start = spans[-1][1] if spans else 0
    blanks = [m.end() for m in _PARAGRAPH.finditer(markdown, start)]
    return blanks[-1] if blanks else start


class _Cutter:
    def __init__(self, text: str, limit: int, protected: list[tuple[int, int]]) -> None:
        self.text = text
        self.limit = limit
        self.off = _offsets(text)
        self.code = protected
        # A block that fits one message is never cut; a longer one may be cut between lines.
        self.protected = [
            (a, b) for a, b in protected if self.off[b] - self.off[a] <= limit
        ]
        self.breaks = [sorted(self._positions(rx)) for rx in _LEVELS]

    def _positions(self, rx: re.Pattern[str]) -> set[int]:
        at_end = rx is _SENTENCE
        return {m.end() if at_end else m.start() for m in rx.finditer(self.text)}

    def _inside(self, pos: int) -> bool:
        return any(a < pos < b for a, b in self.protected)

    def _latest(self, level: int, lo: int, hi: int) -> int | None:
        cands = self.breaks[level]
        i = bisect.bisect_right(cands, hi)
        while i > 0 and cands[i - 1] > lo:
            i -= 1
            if not self._inside(cands[i]):
                return cands[i]
        return None

    def cut(self, start: int) -> int:
        """End (exclusive) of the message that begins at `start`."""
        budget = self.off[start] + self.limit
        hard = bisect.bisect_right(self.off, budget) - 1
        if hard >= len(self.text):
            return len(self.text)
        half = start + (hard - start) // 2
        found = [self._latest(level, start, hard) for level in range(len(_LEVELS))]
        for pos in found:
            if pos is not None and pos >= half:
                return pos
        best = max((p for p in found if p is not None), default=None)
        if best is not None:
            return best
        return _safe_cut(self.text, hard, start)

    def next_start(self, end: int) -> int:
        # Inside code, leading spaces are indentation: keep them.
        in_code = any(a <= end < b for a, b in self.code)
        skip = "\n\r" if in_code else " \t\n\r"
        while end < len(self.text) and self.text[end] in skip:
            end += 1
        return end


def _clip(entities: tuple[Entity, ...], lo: int, hi: int) -> tuple[Entity, ...]:
    out = []
    for e in entities:
        a, b = max(e.offset, lo), min(e.offset + e.length, hi)
        if b > a:
            out.append(replace(e, offset=a - lo, length=b - a))
    return tuple(out)


def split_text(
    text: str,
    limit: int = MAX_MESSAGE,
    entities: tuple[Entity, ...] = (),
    protected: list[tuple[int, int]] | None = None,
) -> list[MessagePart]:
    """Cut `text` (with its entities) into pieces of at most `limit` UTF-16 units.

    `protected` spans (Python indices) are kept whole when they fit a message. Code
    (`pre`) entities are protected automatically. Whitespace at the cuts is dropped.
    """
    if limit < 2:
        raise ValueError("limit too small")
    spans = list(protected or [])
    if entities:
        off = _offsets(text)
        for e in entities:
            if e.type == "pre":
                a = bisect.bisect_left(off, e.offset)
                b = bisect.bisect_left(off, e.offset + e.length)
                spans.append((a, b))
    cutter = _Cutter(text, limit, spans)
    pieces: list[MessagePart] = []
    start = cutter.next_start(0)
    while start < len(text):
        end = cutter.cut(start)
        stop = end
        while stop > start and text[stop - 1].isspace():
            stop -= 1
        if stop > start:
            lo, hi = cutter.off[start], cutter.off[stop]
            pieces.append(MessagePart(text[start:stop], _clip(entities, lo, hi)))
        start = cutter.next_start(max(end, start + 1))
    return pieces


def split_markdown(markdown: str, limit: int = MAX_MESSAGE) -> list[str]:
    """Plain-text pieces of raw Markdown (streamed text), code fences kept whole."""
    return [p.text for p in split_text(markdown, limit, protected=fenced_blocks(markdown))]
