"""A new user's first run, as the README says it: a fresh copy of the repo, no settings at all,
`scripts/start.sh` from the repo root, `kullm chat --once` from a second terminal, then Ctrl-C.
And stops by signal to the whole process group mid-reply: exit 0, no traceback, the reply in
flight finished exactly once after the next start."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import psutil
import pytest
from redis.asyncio import Redis

from kullm_core.client import CoreClient
from kullm_core.embedded import running_url
from kullm_core.settings import load_settings
from tests.core.helpers import CONV, USER, collect, done
from tests.serve import serve_env, stored_turns

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _bare_env() -> dict[str, str]:
    """This environment without any kullm or platform setting."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("KULLM_", "TELEGRAM_", "SLACK_"))}


def _fresh_copy(dest: Path) -> Path:
    """The repo's tracked and new files (what a clone has), and this machine's set-up .venv.

    That .venv must be set up for this pyproject.toml (`scripts/test.sh` does it first):
    otherwise start.sh would reinstall the project into it from the temporary copy.
    """
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = REPO / ".venv" / ".kullm-setup"
    if not stamp.is_file() or stamp.read_text().split()[:1] != [key]:
        pytest.fail(".venv is not set up for this pyproject.toml: run scripts/test.sh "
                    "(it runs scripts/setup.sh dev first)")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    (dest / ".venv").symlink_to(REPO / ".venv")  # setup.sh finds it set up: no reinstall
    return dest


@contextmanager
def _group(cmd: list[str], cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """Run `cmd` as a terminal would: its own process group, which a Ctrl-C signals whole."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_running(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "running:" in line:
            return lines
    pytest.fail("serve exited before running:\n" + "".join(lines))


def _ours(data_dir: Path) -> list[psutil.Process]:
    """Processes still using this data dir (the supervisor, Valkey)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(data_dir) in cmd:
            found.append(p)
    return found


def _stop_group(proc: subprocess.Popen[str], sig: int) -> tuple[int, str]:
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=90)
    return proc.returncode, err


def test_first_run_start_sh_with_no_settings_then_chat_then_ctrl_c(tmp_path: Path) -> None:
    repo = _fresh_copy(tmp_path / "kullm-chat")
    env = _bare_env()
    with _group(["bash", "scripts/start.sh"], repo, env) as serve:
        _wait_running(serve)
        chat = subprocess.run([".venv/bin/kullm", "chat", "--once", "안녕하세요"], cwd=repo,
                              env=env, capture_output=True, text=True, timeout=120, check=False)
        assert chat.returncode == 0, chat.stderr
        assert chat.stdout.strip()  # the (tiny model's) reply
        assert "Traceback" not in chat.stderr
        probe = subprocess.run([".venv/bin/kullm", "worker", "--check"], cwd=repo, env=env,
                               capture_output=True, text=True, timeout=60, check=False)
        assert probe.returncode == 0 and "1 healthy worker" in probe.stdout
        code, err = _stop_group(serve, signal.SIGINT)  # Ctrl-C
    assert code == 0, err
    assert "Traceback" not in err and "stopped cleanly" in err
    assert (repo / "data" / "redis").is_dir()  # relative data_dir, resolved in the repo root
    assert _ours(repo / "data") == []
    assert running_url(repo / "data") == ""
    # a probe after the stop only probes: it starts no server of its own
    probe = subprocess.run([".venv/bin/kullm", "worker", "--check"], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert probe.returncode == 1 and "no `kullm serve` runs" in probe.stderr
    assert _ours(repo / "data") == []


@asynccontextmanager
async def _serve(
    data: Path, model_dir: Path, **env: str
) -> AsyncIterator[tuple[subprocess.Popen[str], CoreClient]]:
    """`kullm serve` (its own process group) on `data`, and a client of its embedded Redis."""
    settings = load_settings(None, data_dir=data, model={"path": str(model_dir)},
                             limits={"requests_per_minute": 0, "daily_tokens": 0})
    cmd = [sys.executable, "-m", "kullm.cli", "serve"]
    with _group(cmd, REPO, serve_env(data, model_dir, **env)) as proc:
        _wait_running(proc)
        r = Redis.from_url(running_url(data))
        try:
            async with CoreClient(r, settings) as client:
                yield proc, client
        finally:
            await r.aclose()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_group_signal_mid_reply_exits_0_and_the_reply_is_finished_once_after_restart(
    sig: int, tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "d"
    env = {"KULLM_GENERATION__MAX_NEW_TOKENS": "300", "KULLM_GENERATION__TEMPERATURE": "0",
           "KULLM_QUEUE__SHUTDOWN_GRACE_S": "0", "KULLM_QUEUE__HEARTBEAT_S": "0.2",
           "KULLM_QUEUE__RECLAIM_IDLE_S": "1.0"}
    async with _serve(data, tiny_model_dir, **env) as (serve, client):
        sub = await client.submit(CONV, USER, "길게 답해 주세요", "sig-1")
        async for _, ev in client.events(sub.job_id):
            if ev.type == "delta":
                break
        code, err = await asyncio.to_thread(_stop_group, serve, sig)
    assert code == 0, err
    assert "Traceback" not in err
    assert _ours(data) == []
    async with _serve(data, tiny_model_dir, **env) as (again, client):
        final = done(await collect(client, sub.job_id, timeout=90))
        code, err = await asyncio.to_thread(_stop_group, again, signal.SIGTERM)
    assert code == 0, err
    [[turn]] = (await stored_turns(data)).values()  # exactly once
    assert turn.user == "길게 답해 주세요" and turn.assistant == final.text
    assert final.attempt >= 2  # handed back by the first serve, answered by the second


async def test_sigkill_of_serve_leaves_no_server_behind_and_the_next_start_has_the_data(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "d"
    async with _serve(data, tiny_model_dir, KULLM_GENERATION__MAX_NEW_TOKENS="8") as (
        serve, client
    ):
        sub = await client.submit(CONV, USER, "기억해 주세요", "kill-serve-1")
        first = done(await collect(client, sub.job_id, timeout=60))
        serve.kill()  # SIGKILL: no hand-back, no clean stop
        serve.wait()
    deadline = asyncio.get_running_loop().time() + 30
    while _ours(data) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert _ours(data) == []  # its supervisor stopped the server (AOF flushed)
    async with _serve(data, tiny_model_dir) as (again, client):
        [turn] = await client.history(CONV)
        code, err = await asyncio.to_thread(_stop_group, again, signal.SIGTERM)
    assert code == 0, err
    assert turn.assistant == first.text


async def test_chat_says_one_line_when_the_redis_of_serve_goes_away(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "d"
    env = {"KULLM_GENERATION__MAX_NEW_TOKENS": "1000", "KULLM_QUEUE__SHUTDOWN_GRACE_S": "0"}
    async with _serve(data, tiny_model_dir, **env) as (serve, _client):
        chat = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kullm.cli", "chat", "--once", "길게 답해 주세요",
            env=serve_env(data, tiny_model_dir, **env), cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert chat.stdout is not None
        await asyncio.wait_for(chat.stdout.read(1), 60)  # its reply is streaming
        code, _ = await asyncio.to_thread(_stop_group, serve, signal.SIGTERM)
        assert code == 0
        _, err = await asyncio.wait_for(chat.communicate(), 120)
    assert chat.returncode == 1
    assert "Traceback" not in err.decode()
    assert err.decode().strip().splitlines()[-1].startswith("kullm: error: lost the connection")
