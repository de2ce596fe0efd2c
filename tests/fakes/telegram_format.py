"""How the fake Telegram checks formatting, as Telegram does: the `entities` parameter and the
`parse_mode` markups (MarkdownV2, HTML), each refused whole with Telegram's error text."""

from __future__ import annotations

import re
from typing import Any

ENTITY_TYPES = frozenset({
    "mention", "hashtag", "cashtag", "bot_command", "url", "email", "phone_number", "bold",
    "italic", "underline", "strikethrough", "spoiler", "blockquote", "expandable_blockquote",
    "code", "pre", "text_link", "text_mention", "custom_emoji", "date_time",
})

def _bad_entities(why: str) -> ApiError:
    return ApiError(400, f"Bad Request: can't parse entities: {why}")


_LINK_SCHEMES = ("http://", "https://", "tg://", "ton://")


def check_entity(e: dict[str, Any], length: int) -> None:
    """One entity of the `entities` parameter, as Telegram checks it."""
    kind, offset, size = e.get("type"), e.get("offset"), e.get("length")
    if kind not in ENTITY_TYPES:
        raise _bad_entities(f"unsupported entity type {kind!r}")
    if not isinstance(offset, int) or not isinstance(size, int) or offset < 0 or size <= 0:
        raise _bad_entities(f"bad entity offset or length in {e}")
    if offset + size > length:
        raise _bad_entities(f"entity beginning at UTF-16 offset {offset} ends after the end "
                            f"of the text at UTF-16 offset {length}")
    if kind == "text_link" and not str(e.get("url") or "").lower().startswith(_LINK_SCHEMES):
        raise ApiError(400, f"Bad Request: wrong HTTP URL specified: {e.get('url')!r}")
    if kind == "text_mention" and not isinstance(e.get("user"), dict):
        raise _bad_entities("text_mention without a user")
    if kind == "custom_emoji" and not e.get("custom_emoji_id"):
        raise _bad_entities("custom_emoji without custom_emoji_id")


_MDV2_RESERVED = set("_*[]()~`>#+-=|{}.!")
_MDV2_PAIRED = ("||", "__", "*", "_", "~", "```", "`")
_HTML_TAG = re.compile(r"<(/?)([a-zA-Z-]+)[^>]*>")
_HTML_TAGS = frozenset({"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span",
                        "tg-spoiler", "a", "code", "pre", "blockquote", "tg-emoji"})


def parse_markup(text: str, parse_mode: str) -> str:
    """The text a `parse_mode` message shows; refused as Telegram refuses it."""
    mode = parse_mode.lower()
    if mode == "markdownv2":
        return _parse_mdv2(text)
    if mode == "html":
        return _parse_html(text)
    if mode == "markdown":
        return text
    raise ApiError(400, f"Bad Request: unsupported parse_mode {parse_mode!r}")


def _parse_mdv2(text: str) -> str:
    """MarkdownV2: every reserved character outside code and entity markers escaped, every
    entity closed (a link is accepted as `[label](url)` without checking the URL)."""
    out: list[str] = []
    open_at: list[tuple[str, int]] = []
    i = 0
    while i < len(text):
        ch = text[i]
        byte_at = len(text[:i].encode("utf-8"))
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        code = open_at[-1][0] if open_at and open_at[-1][0].startswith("`") else ""
        if code and not text.startswith(code, i):  # inside code only ` and \ are special
            out.append(ch)
            i += 1
            continue
        marker = next((m for m in _MDV2_PAIRED if text.startswith(m, i)), None)
        if marker is not None:
            if open_at and open_at[-1][0] == marker:
                open_at.pop()
            else:
                open_at.append((marker, byte_at))
            i += len(marker)
            continue
        if ch in "[](":  # a link's brackets; its URL runs to the next unescaped `)`
            if ch == "(" and out and text[i - 1] == "]":
                end = text.find(")", i)
                if end < 0:
                    raise _bad_entities(f"Can't find end of a URL at byte offset {byte_at}")
                i = end + 1
            else:
                i += 1
            continue
        if ch in _MDV2_RESERVED:
            raise _bad_entities(f"Character '{ch}' is reserved and must be escaped with the "
                                "preceding '\\'")
        out.append(ch)
        i += 1
    if open_at:
        raise _bad_entities(f"Can't find end of the entity starting at byte offset "
                            f"{open_at[0][1]}")
    return "".join(out)


def _parse_html(text: str) -> str:
    stack: list[tuple[str, int]] = []
    for m in _HTML_TAG.finditer(text):
        closing, tag = m.group(1) == "/", m.group(2).lower()
        at = len(text[: m.start()].encode("utf-8"))
        if tag not in _HTML_TAGS:
            raise _bad_entities(f'Unsupported start tag "{tag}" at byte offset {at}')
        if not closing:
            stack.append((tag, at))
        elif not stack or stack[-1][0] != tag:
            raise _bad_entities(f'Unexpected end tag at byte offset {at}')
        else:
            stack.pop()
    if stack:
        raise _bad_entities(f"Can't find end tag corresponding to start tag "
                            f'"{stack[-1][0]}"')
    plain = _HTML_TAG.sub("", text)
    return plain.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace(
        "&amp;", "&")


class ApiError(Exception):
    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after
