"""Measures of an answer that need no judge: repetition, loops, cuts, emptiness, Hangul share.

The model card warns that repetition depends on the decoding settings: these make it visible
next to the judge's scores (and in `kullm eval --compare`).
"""

from __future__ import annotations

from typing import Any

_LOOP_MIN_CHARS = 24
_LOOP_MAX_PERIOD = 256


def repeated_ngram_share(text: str, n: int) -> float:
    """Share of the answer's word n-grams that repeat an earlier one (0: none repeats)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def ends_in_loop(text: str) -> bool:
    """True when the answer ends repeating one piece: its last max(3 periods, 24 characters)
    repeat a period of 1..256 characters (the degenerate tail of a looping decode)."""
    t = text.rstrip()
    for p in range(1, min(_LOOP_MAX_PERIOD, len(t) // 3) + 1):
        span = max(3 * p, _LOOP_MIN_CHARS)
        if span > len(t):
            break
        tail = t[-span:]
        if tail[:-p] == tail[p:]:  # periodic with period p
            return True
    return False


def _is_hangul(ch: str) -> bool:
    o = ord(ch)
    return 0xAC00 <= o <= 0xD7A3 or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F


def hangul_share(text: str) -> float | None:
    """Hangul among the answer's letters (None: it has no letters)."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return None
    return sum(1 for ch in letters if _is_hangul(ch)) / len(letters)


def measure(response: str, finish_reason: str) -> dict[str, Any]:
    """The local measures of one answer, as stored in items.jsonl."""
    return {
        "rep3": round(repeated_ngram_share(response, 3), 4),
        "rep4": round(repeated_ngram_share(response, 4), 4),
        "loop": ends_in_loop(response),
        "cut": finish_reason == "length",
        "empty": not response.strip(),
        "hangul": None if (h := hangul_share(response)) is None else round(h, 4),
    }


def summarize(measures: list[dict[str, Any]]) -> dict[str, float | None]:
    """Means over the answers: repeated 3-/4-gram shares, shares of looping, cut and empty
    answers, and the Hangul share (over answers that have letters)."""
    if not measures:
        return {}

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    hangul = [m["hangul"] for m in measures if m.get("hangul") is not None]
    return {
        "repeated_3gram_share": mean([m["rep3"] for m in measures]),
        "repeated_4gram_share": mean([m["rep4"] for m in measures]),
        "ends_in_loop_share": mean([float(m["loop"]) for m in measures]),
        "cut_at_max_new_tokens_share": mean([float(m["cut"]) for m in measures]),
        "empty_share": mean([float(m["empty"]) for m in measures]),
        "hangul_share": mean(hangul),
    }
