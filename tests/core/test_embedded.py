"""The embedded Valkey: private files, one server per data dir, never orphaned, no TCP."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from redis import Redis

from kullm_core.embedded import EmbeddedRedis, running_url
from kullm_core.errors import EmbeddedRedisError
from kullm_core.redisd import socket_path

pytestmark = pytest.mark.slow


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _gone(pid: int, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def test_files_are_private_and_there_is_no_tcp_listener(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "data")
    url = server.start_sync()
    try:
        r = Redis.from_url(url)
        r.set("k", "v")
        r.config_set("appendfsync", "always")
        r.set("k2", "v")
        assert r.config_get("port") == {"port": "0"}  # unix socket only
        assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        r.close()
        redis_dir = tmp_path / "data" / "redis"
        assert _mode(tmp_path / "data") == 0o700 and _mode(redis_dir) == 0o700
        files = [p for p in redis_dir.rglob("*") if p.is_file()]
        assert any(p.suffix == ".aof" for p in files)
        assert {oct(_mode(p)) for p in files} == {oct(0o600)}
        sock = Path(url[len("unix://"):])
        assert _mode(sock) == 0o700
    finally:
        server.stop_sync()


def test_a_long_data_path_gets_a_short_private_socket_not_tcp(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    server = EmbeddedRedis(deep)
    url = server.start_sync()
    try:
        assert url == f"unix://{socket_path(deep / 'redis')}"
        assert _mode(Path(url[len("unix://"):]).parent) == 0o700
        assert Redis.from_url(url).ping()
    finally:
        server.stop_sync()


def test_one_server_per_data_dir(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path)
    url = first.start_sync()
    try:
        assert running_url(tmp_path) == url
        with pytest.raises(EmbeddedRedisError, match="already runs"):
            EmbeddedRedis(tmp_path).start_sync()
    finally:
        first.stop_sync()
    assert running_url(tmp_path) == ""


def test_a_server_left_by_a_killed_supervisor_is_stopped_before_a_new_one(
    tmp_path: Path,
) -> None:
    first = EmbeddedRedis(tmp_path)
    Redis.from_url(first.start_sync()).set("kept", "yes")
    orphan = first.server_pid
    assert first._sup is not None
    os.kill(first._sup.pid, signal.SIGKILL)  # the supervisor dies; its Valkey lives on
    first._sup.wait()
    assert psutil.pid_exists(orphan)
    second = EmbeddedRedis(tmp_path)
    url = second.start_sync()
    try:
        assert _gone(orphan)
        assert second.server_pid != orphan
        assert Redis.from_url(url).get("kept") == b"yes"  # the orphan flushed its AOF
    finally:
        second.stop_sync()


def test_the_server_stops_when_its_owner_is_killed(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path\n"
        "from kullm_core.embedded import EmbeddedRedis\n"
        "s = EmbeddedRedis(Path(sys.argv[1])); s.start_sync()\n"
        "print(s.server_pid, flush=True); time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    server_pid = int(owner.stdout.readline())
    owner.kill()
    owner.wait()
    assert _gone(server_pid)
    deadline = time.monotonic() + 20  # and its supervisor exits, releasing the data dir
    while running_url(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running_url(tmp_path) == ""
