"""The pacer: how many prompt tokens a decode step may carry, from measured pass times."""

from __future__ import annotations

from itertools import pairwise

from kullm_core.engine.prefill import GROWTH, MIN_CHUNK, Pacer


def test_until_anything_is_measured_a_step_carries_the_cap() -> None:
    assert Pacer(256).budget() == 256
    pacer = Pacer(256)
    pacer.took(decoding=4, prompt_tokens=0, seconds=0.05)
    assert pacer.budget() == 256  # a step, but no prompt cost yet


def test_a_prefill_pass_gives_a_safe_first_guess() -> None:
    pacer = Pacer(4096, share=0.8)
    pacer.took(decoding=0, prompt_tokens=1000, seconds=1.0)  # 1 ms a token, weights included
    pacer.took(decoding=15, prompt_tokens=0, seconds=0.1)
    assert pacer.budget() == 40  # half of 0.8 of a 100 ms step: a chunk runs slower a token


def test_the_chunk_converges_to_the_share_of_a_step() -> None:
    """Simulated: a step costs 100 ms plus 0.25 ms per prompt token it carries."""
    pacer = Pacer(4096, share=0.8)
    pacer.took(decoding=0, prompt_tokens=1000, seconds=1.0)
    for _ in range(3):
        pacer.took(decoding=15, prompt_tokens=0, seconds=0.1)
    chunks = []
    for _ in range(20):
        n = pacer.budget()
        chunks.append(n)
        pacer.took(decoding=15, prompt_tokens=n, seconds=0.1 + n * 0.00025)
    assert pacer.budget() == 320  # 0.8 * 100 ms / 0.25 ms: the fused step is 1.8 steps
    # it got there by growing at most GROWTH a step from the first guess
    assert chunks[0] == 40
    assert all(b <= round(GROWTH * a) for a, b in pairwise(chunks))


def test_one_lucky_measurement_does_not_make_a_giant_chunk() -> None:
    """A fused step that ran as fast as a plain one (noise) says prompt tokens are free: the
    next chunk still grows only GROWTH over the largest one timed."""
    pacer = Pacer(1024)
    for _ in range(5):
        pacer.took(decoding=15, prompt_tokens=0, seconds=0.3)
    pacer.took(decoding=15, prompt_tokens=26, seconds=0.3)
    assert pacer.budget() == round(GROWTH * 26)


def test_the_step_is_the_median_so_one_slow_step_does_not_move_it() -> None:
    pacer = Pacer(1024)
    for s in (0.3, 0.3, 0.9, 0.3, 0.3):
        pacer.took(decoding=15, prompt_tokens=0, seconds=s)
    assert pacer.step_s == 0.3


def test_the_token_cost_is_fitted_over_the_recent_fused_steps() -> None:
    pacer = Pacer(1024)
    for _ in range(5):
        pacer.took(decoding=15, prompt_tokens=0, seconds=0.1)
    for n, s in ((40, 0.11), (40, 0.13), (40, 0.12)):  # 10, 30, 20 ms over the step
        pacer.took(decoding=15, prompt_tokens=n, seconds=s)
    assert abs(pacer.token_s - 0.06 / 120) < 1e-9


def test_the_budget_stays_within_its_bounds() -> None:
    pacer = Pacer(64)
    pacer.took(decoding=0, prompt_tokens=10, seconds=10.0)
    pacer.took(decoding=2, prompt_tokens=0, seconds=0.001)
    assert pacer.budget() == MIN_CHUNK
    fast = Pacer(64)
    fast.took(decoding=0, prompt_tokens=1000, seconds=0.001)
    fast.took(decoding=2, prompt_tokens=0, seconds=1.0)
    assert fast.budget() == 64


def test_a_burst_of_waiting_requests_gets_a_larger_share_than_one_joining_prompt() -> None:
    """Simulated: 100 ms steps plus 0.25 ms per prompt token; 48 requests wait behind 16
    streams (one prefill pass could not take them all)."""
    pacer = Pacer(4096)  # share 0.4
    for _ in range(5):
        pacer.took(decoding=16, prompt_tokens=0, seconds=0.1)
    for n in (120, 150):
        pacer.took(decoding=16, prompt_tokens=n, seconds=0.1 + n * 0.00025)
    one = pacer.budget(waiting=1, decoding=16)
    assert one == pacer.budget() == 160  # 0.4 of a step: a stream waits 1.4 steps
    # three times as many wait as stream: three times the share, bounded by the growth rule
    assert pacer.budget(waiting=48, decoding=16) == round(GROWTH * 150)
    for n in (187, 234, 292, 365, 456):
        pacer.took(decoding=16, prompt_tokens=n, seconds=0.1 + n * 0.00025)
    assert pacer.budget(waiting=48, decoding=16) == 480  # 1.2 of a step
    assert pacer.budget(waiting=16, decoding=16) == 160  # as many wait as stream: the base
