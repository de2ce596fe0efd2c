"""Local measures and the bootstrap: numbers a reader of report.json relies on."""

from __future__ import annotations

import pytest

from kullm.eval.data import load_items
from kullm.eval.measures import ends_in_loop, hangul_share, measure, repeated_ngram_share, summarize
from kullm.eval.stats import bootstrap_ci, paired_difference, summary


def test_the_252_instructions_ship_with_the_package() -> None:
    items = load_items()
    assert len(items) == 252 and len({i.id for i in items}) == 252
    with_input = next(i for i in items if i.input)
    assert with_input.message == f"{with_input.instruction}\n\n{with_input.input}"
    bare = next(i for i in items if not i.input)
    assert bare.message == bare.instruction
    assert [i.id for i in load_items(3)] == [i.id for i in items[:3]]


def test_repetition_loops_cuts_and_hangul() -> None:
    assert repeated_ngram_share("가 나 다 라 마", 3) == 0.0
    assert repeated_ngram_share("가 나 다 가 나 다 가 나 다", 3) == pytest.approx(4 / 7)
    assert ends_in_loop("서울은 수도입니다. " + "그리고 또 " * 8)
    assert ends_in_loop("답: " + "ㅎ" * 30) and not ends_in_loop("ㅋㅋㅋ 재밌네요")
    assert not ends_in_loop("고려대학교는 1905년에 설립되었습니다. 감사합니다.")
    assert hangul_share("안녕 hi") == 0.5 and hangul_share("123 !") is None
    m = measure("", "length")
    assert (m["empty"], m["cut"], m["hangul"]) == (True, True, None)
    s = summarize([measure("안녕하세요", "stop"), measure("hello", "length")])
    assert s["cut_at_max_new_tokens_share"] == 0.5 and s["hangul_share"] == 0.5


def test_bootstrap_intervals_hold_the_mean_and_pairing_cancels_shared_variation() -> None:
    values = [1.0, 5.0, 3.0, 4.0, 2.0] * 20
    lo, hi = bootstrap_ci(values, seed=1)
    assert lo < 3.0 < hi and bootstrap_ci(values, seed=1) == (lo, hi)
    assert summary([4.0]) == {"mean": 4.0, "ci95": [4.0, 4.0]}
    a = values
    b = [v + 1.0 for v in values]  # the same items, each one better by exactly 1
    assert paired_difference(a, b) == {"mean": 1.0, "ci95": [1.0, 1.0]}
