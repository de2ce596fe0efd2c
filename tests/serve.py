"""Running `kullm serve` as a real process in tests, and reading what it stored."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from redis.asyncio import Redis

from kullm_core.embedded import EmbeddedRedis
from kullm_core.wire import Turn, parse_turn


def serve_env(data_dir: Path, model_dir: Path, **extra: str) -> dict[str, str]:
    """This environment without kullm/platform settings, plus a data dir and the tiny model."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KULLM_", "TELEGRAM_", "SLACK_"))}
    env.update({"KULLM_DATA_DIR": str(data_dir), "KULLM_MODEL__PATH": str(model_dir), **extra})
    return env


@dataclass
class Serve:
    """A running `kullm serve`: its process, the log line saying what runs, and its log."""

    proc: subprocess.Popen[str]
    running: str
    log: list[str] = field(default_factory=list)
    """Its stderr, line by line; whole once `stop` returned."""
    reader: threading.Thread | None = None

    async def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then its exit status. Waits off the event loop: the fake platform servers
        of the test run on that loop and must keep answering serve while it shuts down."""
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.proc.wait, timeout)
        if self.reader is not None:
            await asyncio.to_thread(self.reader.join, timeout)
        return code

    def tracebacks(self) -> list[str]:
        return [line for line in self.log if line.startswith("Traceback")]


@contextmanager
def running_serve(env: dict[str, str]) -> Iterator[Serve]:
    """Start `kullm serve`; yield it once it logs what is running."""
    proc = subprocess.Popen([sys.executable, "-m", "kullm.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    serve = Serve(proc, "")
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            serve.log.append(line)
            if "running:" in line:
                serve.running = line
                break
        assert serve.running, "serve exited before it ran:\n" + "".join(serve.log)
        # Keep reading: a full pipe would block serve on its next log line.
        serve.reader = threading.Thread(target=_read_into, args=(proc.stderr, serve.log),
                                        daemon=True)
        serve.reader.start()
        yield serve
    finally:
        proc.kill()


def _read_into(stream: IO[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


async def stored_turns(data_dir: Path, pattern: str = "*") -> dict[str, list[Turn]]:
    """Conversations on disk after serve stopped (its embedded Valkey restarted on them)."""
    async with EmbeddedRedis(data_dir) as server:
        r = Redis.from_url(server.url)
        out = {}
        async for key in r.scan_iter(match=f"kullm:conv:{pattern}"):
            out[key.decode()] = [parse_turn(raw) for raw in await r.lrange(key, 0, -1)]
        await r.aclose()
    return out
