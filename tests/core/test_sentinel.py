"""Redis HA: the worker and client find the master through a real Valkey Sentinel."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kullm.runtime import connect
from kullm_core.client import CoreClient
from kullm_core.embedded import server_binary_path
from kullm_core.worker import Worker
from tests.conftest import test_settings_for
from tests.core.helpers import ask


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


@pytest.fixture
def sentinel_url(tmp_path: Path) -> Iterator[str]:
    binary = server_binary_path()
    master, sent = _port(), _port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sent}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor kullm 127.0.0.1 {master} 1\n")
    procs = [
        subprocess.Popen([binary, "--port", str(master), "--bind", "127.0.0.1", "--save", "",
                          "--dir", str(tmp_path)], stdout=subprocess.DEVNULL),
        subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL),
    ]
    try:
        _wait(master)
        _wait(sent)
        yield f"redis+sentinel://127.0.0.1:{sent}/kullm/0"
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


async def test_pipeline_through_sentinel(
    sentinel_url: str, tmp_path: Path, tiny_model_dir: Path, tiny_engine: Any,
    tiny_tokenizer: Any,
) -> None:
    s = test_settings_for(sentinel_url, tiny_model_dir, tmp_path)
    r = connect(sentinel_url)
    w = Worker(s, r, tiny_engine, tiny_tokenizer)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    async with CoreClient(r, s) as client:
        reply = await ask(client, "센티널을 통해 안녕", "sent-1")
        assert reply.completion_tokens == 24
    stop.set()
    await task
    await r.aclose()
