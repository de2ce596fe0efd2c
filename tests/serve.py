"""Running `kullm serve` as a real process in tests, and reading what it stored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redis.asyncio import Redis

from kullm_core.embedded import EmbeddedRedis
from kullm_core.wire import Turn, parse_turn


def serve_env(data_dir: Path, model_dir: Path, **extra: str) -> dict[str, str]:
    """This environment without kullm/platform settings, plus a data dir and the tiny model."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KULLM_", "TELEGRAM_", "SLACK_"))}
    env.update({"KULLM_DATA_DIR": str(data_dir), "KULLM_MODEL__PATH": str(model_dir), **extra})
    return env


@contextmanager
def running_serve(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start `kullm serve`; yield it once it logs what is running (and that log line)."""
    proc = subprocess.Popen([sys.executable, "-m", "kullm.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        running = ""
        for line in proc.stderr:
            if "running:" in line:
                running = line
                break
        # Keep reading: a full pipe would block serve on its next log line.
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        yield proc, running
    finally:
        proc.kill()


def stop_serve(proc: subprocess.Popen[str], timeout: float = 60) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


async def stored_turns(data_dir: Path, pattern: str = "*") -> dict[str, list[Turn]]:
    """Conversations on disk after serve stopped (its embedded Valkey restarted on them)."""
    async with EmbeddedRedis(data_dir) as server:
        r = Redis.from_url(server.url)
        out = {}
        async for key in r.scan_iter(match=f"kullm:conv:{pattern}"):
            out[key.decode()] = [parse_turn(raw) for raw in await r.lrange(key, 0, -1)]
        await r.aclose()
    return out
