"""`kullm eval` as a user runs it: the first run with no settings at all (tiny model, embedded
Redis), one honest line when the judge is unreachable, bad options named."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from kullm import cli
from kullm.eval.cli import parse_overrides
from kullm_core.errors import ConfigError
from tests.eval.fake_judge import FakeJudge


def _closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def _config(tmp_path: Path, redis_url: str, model_dir: Path) -> Path:
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[redis]\nurl = "{redis_url}"\n'
                   f'[model]\npath = "{model_dir}"\n', "utf-8")
    return cfg


def test_an_unreachable_judge_is_one_line_before_any_answer(
    tmp_path: Path, redis_url: str, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    url = _closed_url()
    cfg = _config(tmp_path, redis_url, tiny_model_dir)
    rc = cli.main(["--config", str(cfg), "eval", "--judge-url", url, "--judge-model", "m",
                   "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"kullm: error: the judge at {url} cannot be reached (ConnectError")
    assert err.count("\n") == 1 and not (tmp_path / "out" / "items.jsonl").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--set", "temperature=0"], "write SECTION.FIELD=VALUE"),
    (["--set", "generation.temprature=0"], "setting `generation.temprature`"),
    ([], "needs --judge-url and --judge-model"),
])
def test_bad_options_are_named(
    tmp_path: Path, redis_url: str, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
    argv: list[str], message: str,
) -> None:
    cfg = _config(tmp_path, redis_url, tiny_model_dir)
    judge = ["--judge-url", _closed_url(), "--judge-model", "m"] if argv else []
    assert cli.main(["--config", str(cfg), "eval", *judge, *argv]) == 2
    assert message in capsys.readouterr().err


def test_set_values_are_converted_by_the_settings() -> None:
    assert parse_overrides(["generation.stop_strings=[\"###\"]", "generation.seed=null",
                            "generation.top_p=0.8"]) == {
        "generation": {"stop_strings": ["###"], "seed": None, "top_p": "0.8"}}
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_overrides(["generation.stop_strings=[oops"])


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_the_first_run_with_no_settings_at_all(
    tmp_path: Path, fake_judge: FakeJudge
) -> None:
    """`kullm eval --judge-url ... --judge-model ... --limit 3` in a folder with no settings:
    the tiny model is built, the embedded Redis started, three answers judged."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KULLM_", "TELEGRAM_", "SLACK_", "OPENAI_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", JUDGE_KEY="sk-test")
    fake_judge.key = "sk-test"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kullm.cli", "eval", "--judge-url", fake_judge.url,
        "--judge-model", "judge", "--judge-key-env", "JUDGE_KEY", "--limit", "3",
        "--out", "run", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report = json.loads((tmp_path / "run" / "report.json").read_text("utf-8"))
    assert (report["n"], report["failed"]) == (3, 0)
    assert report["run"]["model_used"] == {
        "engine": "local (tiny random model)", "tokenizer": str(tmp_path / "data" / "tiny-model")}
    assert report["run"]["system_prompt_seen_by_model"].startswith("당신은 고려대학교")
    assert "Overall Quality" in out.decode() and "3 judged" in out.decode()
    assert "TINY RANDOM" in err.decode() and "kullm eval: 3/3 (0 failed)" in err.decode()
    assert len(fake_judge.scored_prompts()) == 3
