"""Incremental, Korean-safe detokenization.

A Hangul syllable is 3 UTF-8 bytes; with byte-fallback tokens it can arrive over several
tokens, and decoding a prefix then ends in U+FFFD. We hold text back until the character is
complete, and decode a sliding window (like TGI's `decode_token`) so SentencePiece's leading
spaces come out right.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@lru_cache(maxsize=8)
def _byte_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of SentencePiece byte-fallback tokens (`<0xEB>`): a run of them decodes as one
    group, so its text is only final once a normal token (or the end) follows."""
    vocab = tokenizer.get_vocab()
    return frozenset(i for t, i in vocab.items() if _BYTE_TOKEN.match(t))


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas that never split a character."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        try:
            self.byte_ids = _byte_token_ids(tokenizer)
        except (AttributeError, TypeError):
            self.byte_ids = frozenset()

    def _decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids, skip_special_tokens=self.skip))

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text ('' while a character is partial)."""
        self.ids.append(token_id)
        if token_id in self.byte_ids:
            return ""
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """Text still held back at the end (a truly invalid byte sequence decodes as U+FFFD)."""
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""
