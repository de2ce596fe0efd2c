"""Model Markdown -> Slack: message splitting, markdown blocks, mrkdwn and plain fallbacks.

A reply is one source string; `split` cuts it into message-sized segments at the best boundary
(paragraph, then line, then space) and is stable while text is appended, so a segment that
was sent never has to move. Segments concatenate back to the source exactly; only a code fence
cut in two is closed and reopened around the cut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE = re.compile(r"^ {0,3}(```+|~~~+)[ \t]*([\w+#.-]*)", re.MULTILINE)
# Slack turns <!channel>, <!here>, <!everyone>, <!subteam^...> into notifications; a model
# must never ping a whole channel.
_BROADCAST = re.compile(r"<!")
ZWSP = "\u200b"


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    closed: bool
    """More text follows in a next message (the cut is final)."""


def fence_at(text: str, pos: int) -> str | None:
    """The info string of the code fence open at `pos` ('' for a bare fence), or None."""
    open_fence: str | None = None
    marker = ""
    for m in _FENCE.finditer(text, 0, pos):
        if m.end() > pos:
            break
        if open_fence is None:
            open_fence, marker = m.group(2), m.group(1)
        elif m.group(1).startswith(marker[:3]) and not m.group(2):
            open_fence, marker = None, ""
    return open_fence


def _best_cut(text: str, lo: int, hi: int, min_cut: int = 0) -> int:
    """A cut in (max(lo, min_cut), hi]: after a paragraph break outside code, a line break,
    a space; else at `hi`."""
    floor = max(lo + (hi - lo) // 3, min_cut)
    if floor >= hi:
        return hi
    para = [m.end() for m in re.finditer(r"\n[ \t]*\n\s*", text[lo:hi])]
    for off in reversed(para):
        cut = lo + off
        if cut <= floor:
            break
        if fence_at(text, cut) is None:
            return cut
    for sep in ("\n", " ", "\u3000"):
        idx = text.rfind(sep, floor, hi)
        if idx >= 0:
            return idx + 1
    return hi


def split(
    text: str, limit: int, forced: tuple[int, ...] = (), min_first: int = 0
) -> list[Segment]:
    """Cut `text` into segments of at most `limit` characters (plus fence markers).

    `forced` are cuts already made (messages whose content is fixed); later segments are cut
    greedily, which keeps every earlier cut in place while `text` grows. The first greedy cut
    is never before `min_first` (text already streamed into that message).
    """
    segments: list[Segment] = []
    start = 0
    for cut in sorted(set(forced)):
        if start < cut <= len(text):
            segments.append(Segment(start, cut, True))
            start = cut
    while len(text) - start > limit:
        cut = _best_cut(text, start, start + limit, min_first)
        min_first = 0
        segments.append(Segment(start, cut, True))
        start = cut
    segments.append(Segment(start, len(text), False))
    return segments


def neutralize(text: str) -> str:
    """Keep broadcast mentions from the model inert."""
    return _BROADCAST.sub("<" + ZWSP + "!", text) if "<!" in text else text


@dataclass(frozen=True)
class Chunk:
    """A segment's text as sent: `prefix` + body + `suffix` (the fence repairs)."""

    prefix: str
    body: str
    suffix: str

    @property
    def text(self) -> str:
        return self.prefix + self.body + self.suffix


def as_chunk(text: str, seg: Segment, *, close_open_fence: bool) -> Chunk:
    """The Markdown a segment shows. A fence open at its start is reopened; one open at its
    end is closed when the segment is closed (or when asked, for a tidy partial render)."""
    lang = fence_at(text, seg.start) if seg.start else None
    prefix = f"```{lang}\n" if lang is not None else ""
    body = neutralize(text[seg.start:seg.end])
    suffix = ""
    closing = seg.closed or close_open_fence
    if closing and fence_at(text, seg.end) is not None and not body.endswith("```"):
        suffix = "\n```" if not body.endswith("\n") else "```"
    return Chunk(prefix, body, suffix)


_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__")
_ITALIC = re.compile(r"(?<![*\w])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![*\w])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_BULLET = re.compile(r"^(\s*)[-*+]\s+", re.MULTILINE)
_CODE_SPLIT = re.compile(r"(```.*?(?:```|$)|`[^`\n]+`)", re.DOTALL)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn_prose(text: str) -> str:
    links: list[str] = []

    def keep_link(m: re.Match[str]) -> str:
        links.append(f"<{m.group(2)}|{_escape(m.group(1))}>")
        return f"\x00{len(links) - 1}\x00"

    text = _LINK.sub(keep_link, text)
    text = _escape(text)
    text = _ITALIC.sub(lambda m: f"_{m.group(1)}_", text)
    text = _BOLD.sub(lambda m: f"*{m.group(1) or m.group(2)}*", text)
    text = _STRIKE.sub(lambda m: f"~{m.group(1)}~", text)
    text = _HEADING.sub(lambda m: f"*{m.group(1)}*", text)
    text = _BULLET.sub(lambda m: f"{m.group(1)}• ", text)
    return re.sub("\x00(\\d+)\x00", lambda m: links[int(m.group(1))], text)


def to_mrkdwn(markdown: str) -> str:
    """CommonMark-ish model output -> Slack mrkdwn (for workspaces without markdown blocks)."""
    out: list[str] = []
    for part in _CODE_SPLIT.split(markdown):
        if part.startswith("```"):
            body = re.sub(r"^```[\w+#.-]*\n?", "```\n", part, count=1)
            out.append(_escape(body))
        elif part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(_escape(part))
        else:
            out.append(_mrkdwn_prose(part))
    return "".join(out)


def to_plain(markdown: str, limit: int = 1000) -> str:
    """Notification / screen-reader text: Markdown marks removed, kept short."""
    text = re.sub(r"^```[\w+#.-]*\s*$", "", markdown, flags=re.MULTILINE)
    text = _LINK.sub(r"\1 (\2)", text)
    text = _BOLD.sub(lambda m: m.group(1) or m.group(2), text)
    text = _HEADING.sub(r"\1", text)
    text = text.replace("`", "").strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text or "…"


def message_payload(markdown: str, *, blocks: bool) -> dict[str, object]:
    """chat.postMessage / chat.update arguments showing `markdown`."""
    if blocks:
        return {"text": to_plain(markdown), "blocks": [{"type": "markdown", "text": markdown}]}
    return {"text": to_mrkdwn(markdown), "blocks": []}


_USER_LINK = re.compile(r"<(https?://[^|>]+)\|([^>]+)>")
_BARE_LINK = re.compile(r"<(https?://[^|>]+)>")
_CHANNEL = re.compile(r"<#C\w+\|([^>]*)>")


def inbound_text(text: str, bot_user_id: str | None) -> str:
    """A Slack message as the model should read it: the bot's mention removed, links and
    entities made plain."""
    if bot_user_id:
        text = text.replace(f"<@{bot_user_id}>", " ")
    text = _USER_LINK.sub(r"\2 (\1)", text)
    text = _BARE_LINK.sub(r"\1", text)
    text = _CHANNEL.sub(r"#\1", text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text.strip()
