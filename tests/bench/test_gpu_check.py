"""`bash bench/gpu_check.sh --dry-run` as the GPU image would run it, so the device check cannot
rot between the rare lent GPUs.

The image has torch and transformers only (no pydantic, httpx or redis, the project not
installed). `KULLM_GPU_IMAGE_PYTHON` names such an interpreter (e.g. a venv with only
`torch==2.13.0 transformers==5.17.0`, as `.ci/run` builds); without it the project's python
runs the dry run with those packages blocked (None in `sys.modules`: both `import` and
`find_spec` see them absent)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kullm_core.engine.base import SamplingParams
from kullm_core.settings import GenerationSettings

ROOT = Path(__file__).resolve().parents[2]
NOT_ON_THE_IMAGE = ("pydantic", "pydantic_core", "pydantic_settings", "httpx", "redis", "kullm")


def test_gpu_check_samples_like_production() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from bench.llama import PRODUCTION
    finally:
        sys.path.remove(str(ROOT))
    expected = SamplingParams.from_settings(GenerationSettings())
    assert dataclasses.replace(expected, max_new_tokens=PRODUCTION.max_new_tokens) == PRODUCTION


def _image_env(tmp_path: Path) -> tuple[str, dict[str, str]]:
    # as the image runs it: torch on every core (the suite's one-thread setting is for tests
    # that share the machine with the processes they start; the check runs alone)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KULLM_", "PYTHON")) and k != "OMP_NUM_THREADS"}
    env["OUT"] = str(tmp_path / "out")
    python = os.environ.get("KULLM_GPU_IMAGE_PYTHON")
    if not python:
        python = sys.executable
        block = tmp_path / "block"
        block.mkdir()
        (block / "sitecustomize.py").write_text(
            "import sys\n"
            f"for name in {NOT_ON_THE_IMAGE!r}:\n"
            "    sys.modules[name] = None  # absent, as on the GPU image\n")
        env["PYTHONPATH"] = str(block)
    env["PYTHON"] = python
    return python, env


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dry_run_prints_and_writes_the_whole_table(tmp_path: Path) -> None:
    python, env = _image_env(tmp_path)
    run = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=170, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    table = (tmp_path / "out" / "gpu_check.md").read_text("utf-8")
    assert table in run.stdout
    assert "DRY RUN" in table and "temperature 0.7, top_p 0.9, repetition_penalty 1.1" in table
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()
            if line.startswith("| ") and "scenario" not in line}
    assert set(rows) == {
        "batch-1 decode", "first token, 1,000-token prompt",
        "16 × 1,000-token: aggregate", "16 × 1,000-token: first token p50 / p95",
        "64 × 1,000-token: aggregate", "64 × 1,000-token: first token p50 / p95"}, table
    assert all("not run" not in line and line.count("tok/s") in (0, 2)
               for line in rows.values()), table
    # the decode steps of the runs ran overlapped: queued before the last one's tokens were read
    ahead = re.search(r"- local engine: (\d+) of (\d+) decode steps queued", table)
    assert ahead is not None and 0 < int(ahead[1]) < int(ahead[2]), table
    assert (tmp_path / "out" / "gpu_check.json").exists()
    if python == sys.executable:
        assert "pydantic" not in run.stdout + run.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_check_stops_itself_at_its_budget_and_keeps_the_table(tmp_path: Path) -> None:
    _, env = _image_env(tmp_path)
    run = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--budget-s", "0.5"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=110,
                         check=False)
    assert run.returncode == 3, run.stdout[-2000:] + run.stderr[-2000:]
    table = (tmp_path / "out" / "gpu_check.md").read_text("utf-8")
    assert "STOPPED AT THE BUDGET" in table and "| scenario |" in table
