"""`kullm eval` end to end: the tiny model answering through real Redis, the queue and a worker,
the fake judge scoring: the report says what the judge gave; retries, resume, --compare."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from redis.asyncio import Redis

from kullm import cli
from kullm.eval import cli as eval_cli
from kullm.eval.data import load_items
from kullm.eval.judge import CRITERIA, JudgeUnreachable, fill_prompt
from kullm.eval.report import compare, print_compare
from kullm.eval.run import EvalOptions, run_eval
from kullm_core.errors import ConfigError
from kullm_core.prompt import PromptBuilder
from kullm_core.settings import Settings
from tests.conftest import test_settings_for
from tests.eval.fake_judge import FakeJudge, expected_means, scores_for


async def _no_wait(_s: float) -> None:
    return None


def _opts(fake: FakeJudge, out: Path, limit: int, **kw: Any) -> EvalOptions:
    return EvalOptions(judge_url=fake.url, judge_model="judge", out=out, limit=limit,
                       concurrency=2, judge_sleep=_no_wait, **kw)


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "items.jsonl").read_text("utf-8").splitlines()]


async def _run(settings: Settings, opts: EvalOptions, built: tuple[Any, Any]) -> dict[str, Any]:
    return await run_eval(settings, opts, built=built, stdout=io.StringIO(),
                          stderr=io.StringIO())


async def test_the_report_gives_the_judges_means_after_retries(
    settings: Settings, redis: Redis, tiny_engine: Any, tiny_tokenizer: Any, tiny_model: Any,
    fake_judge: FakeJudge, tmp_path: Path,
) -> None:
    fake_judge.plan = ["500", "429", "garbage"]
    out, printed = tmp_path / "run", io.StringIO()
    report = await run_eval(settings, _opts(fake_judge, out, 4), built=(tiny_engine,
                            tiny_tokenizer), stdout=printed, stderr=io.StringIO())
    records = _records(out)
    assert (report["n"], report["failed"], len(records)) == (4, 0, 4)
    assert list(report["means"]) == list(CRITERIA)
    assert {c: m["mean"] for c, m in report["means"].items()} == expected_means(records)
    assert all(m["ci95"][0] <= m["mean"] <= m["ci95"][1] for m in report["means"].values())
    assert json.loads((out / "report.json").read_text("utf-8"))["means"] == report["means"]
    # the retries happened: a 500, a 429 and an unparseable answer, each asked again
    assert fake_judge.statuses.count(500) == fake_judge.statuses.count(429) == 1
    assert sum(r["judge_calls"] for r in records) == 5
    for r in records:
        assert r["scores"] == scores_for(r["response"])
        assert fill_prompt(r["instruction"], r["input"], r["response"]) in fake_judge.prompts
    # the answers are the pipeline's: greedy, 24 tokens, the card's prompt
    item = next(i for i in load_items(4) if i.id == records[0]["id"])
    ids = PromptBuilder.from_settings(tiny_tokenizer, settings.generation).build(
        [], item.message).ids
    gen = tiny_model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
    assert records[0]["response"] == tiny_tokenizer.decode(gen[0][len(ids):],
                                                           skip_special_tokens=True)
    assert records[0]["tokens"] == {"prompt": len(ids), "completion": 24}
    assert report["local"]["cut_at_max_new_tokens_share"] == 1.0
    assert "Overall Quality" in printed.getvalue()
    assert await redis.keys(f"{settings.redis.prefix}.eval.*") == []  # the run's keys are gone


async def test_a_rerun_resumes_what_is_not_done(
    settings: Settings, redis: Redis, tiny_engine: Any, tiny_tokenizer: Any,
    fake_judge: FakeJudge, tmp_path: Path,
) -> None:
    built, out = (tiny_engine, tiny_tokenizer), tmp_path / "run"
    fake_judge.plan = ["500"] * 2  # the judge goes down after the first answer
    with pytest.raises(JudgeUnreachable):
        await _run(settings, _opts(fake_judge, out, 1, judge_http_retries=1), built)
    [unjudged] = _records(out)
    assert unjudged["status"] == "unjudged" and unjudged["response"]

    await _run(settings, _opts(fake_judge, out, 3), built)
    records = _records(out)
    assert [r["status"] for r in records] == ["unjudged", "ok", "ok", "ok"]
    again = next(r for r in records[1:] if r["id"] == unjudged["id"])
    assert again["latency_ms"] == unjudged["latency_ms"]  # judged, not generated again

    calls = len(fake_judge.prompts)
    report = await _run(settings, _opts(fake_judge, out, 3), built)
    assert len(fake_judge.prompts) == calls and len(_records(out)) == 4  # nothing redone
    assert report["n"] == 3 and report["means"] == {
        c: {**m, "mean": expected_means(records)[c]} for c, m in report["means"].items()}

    other = test_settings_for(settings.redis.url, Path(settings.model.path), tmp_path,
                              generation={"repetition_penalty": 1.2})
    with pytest.raises(ConfigError, match=r"generation\.repetition_penalty = 1\.0, now 1\.2"):
        await _run(other, _opts(fake_judge, out, 3), built)


async def test_compare_two_runs_pairs_items_and_shows_what_changed(
    settings: Settings, redis: Redis, tiny_engine: Any, tiny_tokenizer: Any,
    fake_judge: FakeJudge, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    built = (tiny_engine, tiny_tokenizer)
    await _run(settings, _opts(fake_judge, tmp_path / "a", 3), built)
    args = cli._parser().parse_args(["eval", "--set", "generation.system_prompt_mode=none"])
    b_settings = test_settings_for(settings.redis.url, Path(settings.model.path), tmp_path,
                                   **eval_cli.parse_overrides(args.overrides))
    await _run(b_settings, _opts(fake_judge, tmp_path / "b", 3), built)
    a, b = {r["id"]: r for r in _records(tmp_path / "a")}, {
        r["id"]: r for r in _records(tmp_path / "b")}
    assert a.keys() == b.keys() and any(a[i]["response"] != b[i]["response"] for i in a)

    cmp = compare(tmp_path / "a", tmp_path / "b")
    assert cmp["paired"] == 3
    for c in CRITERIA:
        diff = sum(scores_for(b[i]["response"])[c] - scores_for(a[i]["response"])[c] for i in a)
        assert cmp["differences"][c]["mean"] == round(diff / 3, 4)
    assert cmp["settings_changed"] == ["generation.system_prompt_mode: 'template' -> 'none'"]
    moved = [sum(abs(scores_for(b[i]["response"])[c] - scores_for(a[i]["response"])[c])
                 for c in CRITERIA) for i in (r["id"] for r in cmp["changed_most"])]
    assert moved == sorted(moved, reverse=True) and all(m > 0 for m in moved)

    args = cli._parser().parse_args(["eval", "--compare", str(tmp_path / "a"),
                                     str(tmp_path / "b"), "--out", str(tmp_path / "cmp")])
    assert await eval_cli.main(args, settings, None) == 0
    shown = capsys.readouterr().out
    assert "B - A" in shown and "Overall Quality" in shown and "system_prompt_mode" in shown
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text("utf-8"))["paired"] == 3
    print_compare(cmp, io.StringIO())
