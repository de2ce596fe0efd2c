"""The ops endpoint: /healthz, /readyz (flipping with Redis and the heartbeat), /metrics after
a real job through the real worker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from kullm_core.client import CoreClient
from kullm_core.embedded import EmbeddedRedis
from kullm_core.ops import OpsServer, Readiness, redis_ping
from kullm_core.settings import OpsSettings, Settings
from kullm_core.worker import Worker
from tests.core.helpers import ask

ON = OpsSettings(port=0)
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def ops_settings() -> OpsSettings:
    """A free loopback port (port 0 means off)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return OpsSettings(host="127.0.0.1", port=s.getsockname()[1])


async def get(ops: OpsServer | int, path: str, method: str = "GET") -> tuple[int, str]:
    """(status, body) of one request to a running ops server (or to a port)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", ops if isinstance(ops, int) else ops.port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_health_ready_and_metrics_endpoints() -> None:
    async def passes() -> object:
        return True

    async def fails() -> object:
        return False

    async def raises() -> object:
        raise ConnectionError("refused")

    checks = {"engine": passes, "platform": fails, "redis": raises}
    async with OpsServer(ops_settings(), checks=checks, readiness=Readiness()) as ops:
        assert await get(ops, "/healthz") == (200, "ok\n")
        assert await get(ops, "/readyz") == (
            503, "not ready: platform (failed), redis (ConnectionError)\n")
        status, body = await get(ops, "/metrics")
        assert status == 200 and "kullm_jobs_total" in body
        assert (await get(ops, "/nothing"))[0] == 404
        assert (await get(ops, "/healthz", "POST"))[0] == 405
        assert await get(ops, "/healthz?probe=1", "HEAD") == (200, "")


async def test_port_zero_serves_nothing() -> None:
    async with OpsServer(ON, readiness=Readiness()) as ops:
        assert ops.port is None


async def test_worker_is_ready_only_while_its_heartbeat_is_fresh(
    redis: Redis, settings: Settings, tiny_engine: Any, tiny_tokenizer: Any
) -> None:
    worker = Worker(settings, redis, tiny_engine, tiny_tokenizer, "w-ready")
    async with OpsServer(ops_settings(), expect=("worker",), readiness=Readiness()) as ops:
        assert await get(ops, "/readyz") == (503, "not ready: worker (starting)\n")
        assert (await get(ops, "/healthz"))[0] == 200  # alive while the model loads
        ops.watch_worker(worker)
        assert await get(ops, "/readyz") == (503, "not ready: worker (no heartbeat)\n")
        await worker.heartbeat()
        assert await get(ops, "/readyz") == (200, "ready\n")
        # A worker whose loop stopped heartbeating (stuck, or Redis writes failing):
        stale = {"id": worker.id, "at": time.time() - 10 * settings.queue.heartbeat_s}
        await redis.set(worker.keys.worker(worker.id), json.dumps(stale))
        assert await get(ops, "/readyz") == (503, "not ready: worker (heartbeat stale)\n")


async def test_readiness_fails_while_redis_is_down_and_comes_back(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "valkey")
    url = await server.start()
    r = Redis.from_url(url, socket_connect_timeout=1)
    try:
        async with OpsServer(ops_settings(), checks={"redis": redis_ping(r)},
                             readiness=Readiness()) as ops:
            assert await get(ops, "/readyz") == (200, "ready\n")
            await server.stop()
            status, body = await get(ops, "/readyz")
            assert status == 503 and body.startswith("not ready: redis (")
            assert (await get(ops, "/healthz"))[0] == 200
            await server.start()
            assert await get(ops, "/readyz") == (200, "ready\n")
    finally:
        await r.aclose()
        await server.stop()


WORKER_METRICS = (
    "kullm_jobs_total", "kullm_generated_tokens_total", "kullm_prompt_tokens_total",
    "kullm_first_token_seconds_count", "kullm_token_seconds_count", "kullm_inflight_jobs",
    "kullm_batch_slots", "kullm_batch_slots_used", "kullm_queue_depth", "kullm_dead_letters",
)


async def test_metrics_count_a_real_job_through_the_worker(
    client: CoreClient, worker: Worker, redis: Redis
) -> None:
    async with OpsServer(ops_settings(), readiness=Readiness()) as ops:
        ops.watch_worker(worker)
        before = samples((await get(ops, "/metrics"))[1])
        done = await ask(client, "메트릭을 세어 주세요", "ops-1")
        await redis.lpush(worker.keys.dead, json.dumps({"id": "dead-1"}))
        # The reply is committed a decode step before the engine drops its row from the batch.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            after = samples((await get(ops, "/metrics"))[1])
            if after.get(("kullm_batch_slots_used", ())) == 0 or (
                    asyncio.get_running_loop().time() > deadline):
                break
            await asyncio.sleep(0.02)

    names = {name for name, _ in after}
    assert set(WORKER_METRICS) <= names

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert delta("kullm_jobs_total", result=done.finish_reason) == 1
    assert delta("kullm_generated_tokens_total") == done.completion_tokens == 24
    assert delta("kullm_prompt_tokens_total") == done.prompt_tokens > 0
    assert delta("kullm_first_token_seconds_count") == 1
    assert 1 <= delta("kullm_token_seconds_count") <= done.completion_tokens - 1
    assert after[("kullm_batch_slots", ())] == worker.capacity
    assert after[("kullm_batch_slots_used", ())] == 0
    assert after[("kullm_inflight_jobs", ())] == 0
    assert after[("kullm_queue_depth", ())] == 0
    assert after[("kullm_dead_letters", ())] == 1


@pytest.mark.slow
async def test_kullm_worker_process_serves_ops_and_logs_only_json_lines(
    settings: Settings, client: CoreClient, tmp_path: Path
) -> None:
    ops = ops_settings()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KULLM_")}
    env.update({
        "KULLM_REDIS__URL": settings.redis.url, "KULLM_MODEL__PATH": settings.model.path,
        "KULLM_DATA_DIR": str(tmp_path), "KULLM_QUEUE__HEARTBEAT_S": "1.0",
        "KULLM_QUEUE__RECLAIM_IDLE_S": "5.0", "KULLM_GENERATION__MAX_NEW_TOKENS": "8",
        "KULLM_LOG_FORMAT": "json", "KULLM_OPS__HOST": ops.host, "KULLM_OPS__PORT": str(ops.port),
    })
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kullm.cli", "worker", env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(120):
            while not any("running: worker" in x for x in lines):
                line = await proc.stderr.readline()
                assert line, "".join(lines)
                lines.append(line.decode())
        assert await get(ops.port, "/healthz") == (200, "ok\n")
        await ask(client, "프로세스 메트릭", "ops-proc-1")
        assert await get(ops.port, "/readyz") == (200, "ready\n")  # it just answered: fresh
        status, body = await get(ops.port, "/metrics")
        assert status == 200 and set(WORKER_METRICS) <= {n for n, _ in samples(body)}
        assert samples(body)[("kullm_jobs_total", (("result", "length"),))] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), 60)
    lines += rest.decode().splitlines(keepends=True)
    assert proc.returncode == 0, "".join(lines)
    for line in lines:  # no progress bar or stray print between the JSON lines
        assert TS_RE.match(json.loads(line)["ts"]), line
