"""Korean-safe incremental decoding with byte-fallback tokens."""

from __future__ import annotations

import random
from typing import Any

from kullm_core.decode import IncrementalDecoder


def test_hangul_split_over_byte_tokens_is_never_emitted_half(tiny_tokenizer: Any) -> None:
    text = "뷁 똠얌꿍 쀍 안녕하세요 hello 😀"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    pieces = tiny_tokenizer.convert_ids_to_tokens(ids)
    assert any(p.startswith("<0x") for p in pieces), "test needs byte-fallback tokens"
    dec = IncrementalDecoder(tiny_tokenizer)
    deltas = [dec.push(i) for i in ids] + [dec.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tiny_tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(deltas).strip() == text
    held = [d for d in deltas if d == ""]
    assert held, "partial characters must have been held back"


def test_streamed_text_always_equals_the_full_decode(tiny_tokenizer: Any) -> None:
    """Random mixes of byte-fallback and normal tokens, invalid UTF-8 included."""
    rng = random.Random(7)
    vocab = len(tiny_tokenizer)
    for _ in range(500):
        ids = [rng.randrange(3, 259) if rng.random() < 0.5 else rng.randrange(259, vocab)
               for _ in range(rng.randrange(1, 16))]
        dec = IncrementalDecoder(tiny_tokenizer)
        parts = [dec.push(i) for i in ids] + [dec.flush()]
        assert "".join(parts) == tiny_tokenizer.decode(ids, skip_special_tokens=True), ids
