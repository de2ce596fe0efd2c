"""Text from outside, made safe at the edge: every adapter cleans what users send before it
is stored, queued or encoded.

Telegram's JSON may carry a lone UTF-16 surrogate (`"\\ud800"`), which Python decodes into a
`str` that cannot be encoded to UTF-8: JSON dumps, Redis and the tokenizer would all fail on
it, and the user would get "internal error" instead of an answer.
"""

from __future__ import annotations

import re
import unicodedata

REPLACEMENT = "\ufffd"
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NAME_MAX = 32


def clean_text(text: str) -> str:
    """Valid surrogate pairs joined, lone surrogates replaced by U+FFFD, control characters
    other than tab and newlines removed. Clean text is returned unchanged."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # utf-16 with surrogatepass pairs up halves that belong together; the rest is invalid.
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return _CONTROLS.sub("", text)


def clean_name(name: str, limit: int = _NAME_MAX) -> str:
    """A display name fit for one line: no controls, invisible format characters (bidi
    overrides, zero-width), line breaks or colons; spaces collapsed; at most `limit` chars."""
    out = []
    for ch in clean_text(name):
        cat = unicodedata.category(ch)
        # Controls, invisible format characters, every kind of space or line break: a space.
        out.append(" " if ch in ":：﹕꞉" or cat in ("Cc", "Cf") or cat.startswith("Z") else ch)
    return " ".join("".join(out).split())[:limit].strip()
