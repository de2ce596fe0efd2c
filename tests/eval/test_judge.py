"""The judge client against the fake judge on loopback: the card's prompt, tolerant parsing,
retries on 429/5xx (Retry-After respected) and on unparseable answers, honest failure."""

from __future__ import annotations

import hashlib
import socket

import pytest

from kullm.eval.judge import (
    CRITERIA,
    EVAL_PROMPT,
    Judge,
    JudgeError,
    JudgeUnreachable,
    fill_prompt,
    parse_scores,
)
from tests.eval.fake_judge import FakeJudge, scores_for

# sha256 of the prompt as the KULLM repository's README prints it ("Model Evaluation", Prompt)
CARD_PROMPT_SHA256 = "c408f2804ae87ea31f73506c21e1a0a3a4e4263d6618f8f736988d16a3a8827b"


def test_the_prompt_is_the_cards_verbatim_with_its_three_slots() -> None:
    assert hashlib.sha256(EVAL_PROMPT.encode()).hexdigest() == CARD_PROMPT_SHA256
    assert EVAL_PROMPT.endswith("- Overall Quality (1-5):")
    filled = fill_prompt("지시", "", "응답 {input} {instruction}")
    assert "Instruction:\n지시\n\nInput:\n\n\nResponse:\n응답 {input} {instruction}\n" in filled


@pytest.mark.parametrize("text", [
    "- Fluency (1-5): 4\n- Coherence (1-5): 5\n- Accuracy (1-5): 3\n- Completeness (1-5): 2\n"
    "- Overall Quality (1-5): 3",
    "Sure. **Fluency**: 4/5, **Coherence**: 5/5, Accuracy - I would give it a 3 out of 5, "
    "Completeness: 2. Overall quality: 3/5.",
    '{"Fluency": 4, "Coherence": 5, "Accuracy": 3, "Completeness": 2, "Overall Quality": 3}',
    "Fluency: 2 at first sight... on reflection:\nFluency: 4\nCoherence: 5\nAccuracy: 3\n"
    "Completeness: 2\nOverall Quality: 3",
])
def test_scores_are_read_from_forms_prose_fractions_and_json(text: str) -> None:
    assert parse_scores(text) == dict(zip(CRITERIA, [4.0, 5.0, 3.0, 2.0, 3.0], strict=True))


@pytest.mark.parametrize("text", [
    "I cannot rate this.",
    "Fluency: 4\nCoherence: 4\nAccuracy: 4\nCompleteness: 4",  # one missing
    "Fluency: 4\nCoherence: 10\nAccuracy: 4\nCompleteness: 4\nOverall Quality: 4",
    "Fluency: 0\nCoherence: 4\nAccuracy: 4\nCompleteness: 4\nOverall Quality: 4",
])
def test_an_incomplete_or_out_of_range_answer_is_not_guessed(text: str) -> None:
    assert parse_scores(text) is None


class Waits:
    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, s: float) -> None:
        self.seconds.append(s)


async def test_429_and_500_are_retried_and_retry_after_is_respected(
    fake_judge: FakeJudge,
) -> None:
    fake_judge.plan, fake_judge.retry_after = ["429", "500"], "7"
    waits = Waits()
    async with Judge(fake_judge.url, "judge", backoff_s=0.01, sleep=waits) as judge:
        verdict = await judge.score("지시", "", "좋은 답변")
    assert verdict.scores == scores_for("좋은 답변") and verdict.calls == 1
    assert fake_judge.statuses == [429, 500, 200]
    assert waits.seconds[0] == 7.0 and waits.seconds[1] < 7.0  # Retry-After, then backoff
    assert fake_judge.prompts[-1] == fill_prompt("지시", "", "좋은 답변")


async def test_an_unparseable_answer_is_asked_again_then_recorded_as_failed(
    fake_judge: FakeJudge,
) -> None:
    fake_judge.plan = ["garbage"]
    async with Judge(fake_judge.url, "judge", sleep=Waits()) as judge:
        again = await judge.score("지시", "", "답")
        fake_judge.plan = ["garbage"] * 3
        failed = await judge.score("지시", "", "답")
    assert again.scores == scores_for("답") and again.calls == 2
    assert failed.scores is None and failed.calls == 3 and failed.raw == "I cannot rate this."


async def test_a_judge_that_is_not_there_is_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    async with Judge(url, "judge") as judge:
        with pytest.raises(JudgeUnreachable) as err:
            await judge.check()
    assert str(err.value).startswith(f"the judge at {url} cannot be reached (ConnectError")
    assert "\n" not in str(err.value)


async def test_a_judge_that_keeps_failing_gives_up(fake_judge: FakeJudge) -> None:
    fake_judge.plan = ["500"] * 3
    async with Judge(fake_judge.url, "judge", http_retries=2, sleep=Waits()) as judge:
        with pytest.raises(JudgeUnreachable, match="kept failing \\(HTTP 500"):
            await judge.score("지시", "", "답")


async def test_a_rejected_key_is_said_before_any_answer(fake_judge: FakeJudge) -> None:
    fake_judge.key = "sk-right"
    async with Judge(fake_judge.url, "judge", api_key="sk-wrong") as judge:
        with pytest.raises(JudgeError, match="rejected the API key \\(HTTP 401"):
            await judge.check()
    async with Judge(fake_judge.url, "judge", api_key="sk-right") as judge:
        await judge.check()
        assert (await judge.score("지시", "", "답")).scores == scores_for("답")
