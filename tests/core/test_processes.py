"""Real processes: `kullm chat --once`, a SIGKILLed worker, a SIGKILLed embedded Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from kullm_core.client import CoreClient
from kullm_core.embedded import STATE_FILE, EmbeddedRedis
from kullm_core.errors import EmbeddedRedisError
from kullm_core.settings import Settings
from kullm_core.worker import Worker
from tests.conftest import test_settings_for
from tests.core.helpers import CONV, USER, ask, collect, deltas_text, done
from tests.serve import running_serve, serve_env, stored_turns

pytestmark = pytest.mark.slow


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KULLM_")}
    env.update({
        "KULLM_REDIS__URL": settings.redis.url,
        "KULLM_MODEL__PATH": settings.model.path,
        "KULLM_DATA_DIR": str(settings.data_dir),
        "KULLM_GENERATION__TEMPERATURE": "0",
        "KULLM_GENERATION__REPETITION_PENALTY": "1.0",
        "KULLM_QUEUE__HEARTBEAT_S": "0.2",
        "KULLM_QUEUE__RECLAIM_IDLE_S": "1.0",
        "KULLM_LIMITS__REQUESTS_PER_MINUTE": "0",
        **extra,
    })
    return env


def _kullm(*args: str) -> list[str]:
    return [sys.executable, "-m", "kullm.cli", *args]


async def test_chat_once_prints_the_reply_through_a_real_server(
    settings: Settings, client: CoreClient
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *_kullm("chat", "--once", "안녕하세요"),
        env=_env(settings, KULLM_GENERATION__MAX_NEW_TOKENS="16"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    [conv] = [k async for k in client.redis.scan_iter(match="kullm:conv:cli:*")]
    turns = await client.store.history_by_key(conv.decode()[len("kullm:conv:"):])
    assert [t.user for t in turns] == ["안녕하세요"]
    assert out.decode().startswith(turns[0].assistant)  # then the "cut at max length" note


async def test_worker_check_reports_health(settings: Settings, make_worker: Any) -> None:
    def check() -> int:
        return subprocess.run(_kullm("worker", "--check"), env=_env(settings),
                              capture_output=True, timeout=60, check=False).returncode

    async with make_worker() as w:
        await w.heartbeat()
        assert await asyncio.to_thread(check) == 0
    assert await asyncio.to_thread(check) == 1  # a stopped worker removes its health key


async def test_sigkill_worker_mid_generation_another_answers_exactly_once(
    settings: Settings, client: CoreClient, make_worker: Any, tmp_path: Path
) -> None:
    n = "400"
    proc = subprocess.Popen(
        _kullm("worker"), env=_env(settings, KULLM_GENERATION__MAX_NEW_TOKENS=n),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        sub = await client.submit(CONV, USER, "오래 걸리는 답을 해줘", "kill-1")
        events: list[Any] = []
        it = client.events(sub.job_id)
        async for _, e in it:
            events.append(e)
            if e.type == "delta":
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(10)
        s2 = test_settings_for(settings.redis.url, Path(settings.model.path), tmp_path,
                               generation={"max_new_tokens": int(n)})
        async with make_worker(settings=s2):
            events += await collect(client, sub.job_id, timeout=90)
    finally:
        proc.kill()
    final = done(events)
    assert [e.type for e in events].count("done") == 1
    assert final.attempt == 2 and final.completion_tokens == int(n)
    assert deltas_text(events) == final.text
    [turn] = await client.history(CONV)
    assert turn.assistant == final.text


async def test_sigterm_hands_back_or_finishes_in_flight_jobs(
    settings: Settings, client: CoreClient, make_worker: Any, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        _kullm("worker"),
        env=_env(settings, KULLM_GENERATION__MAX_NEW_TOKENS="3000",
                 KULLM_QUEUE__SHUTDOWN_GRACE_S="0"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    sub = await client.submit(CONV, USER, "긴 답", "term-1")
    events: list[Any] = []
    async for _, e in client.events(sub.job_id):
        events.append(e)
        if e.type == "delta":
            proc.send_signal(signal.SIGTERM)
            break
    assert proc.wait(30) == 0
    s2 = test_settings_for(settings.redis.url, Path(settings.model.path), tmp_path,
                           generation={"max_new_tokens": 40})
    async with make_worker(settings=s2):
        events += await collect(client, sub.job_id, timeout=60)
    final = done(events)
    assert final.attempt == 1 + 1 and len(await client.history(CONV)) == 1


async def test_embedded_redis_sigkill_restarts_with_history_intact(
    tmp_path: Path, tiny_engine: Any, tiny_tokenizer: Any, tiny_model_dir: Path
) -> None:
    async with EmbeddedRedis(tmp_path / "state") as server:
        s = test_settings_for(server.url, tiny_model_dir, tmp_path)
        r = Redis.from_url(server.url)
        w = Worker(s, r, tiny_engine, tiny_tokenizer)
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        async with CoreClient(r, s) as client:
            first = await ask(client, "기억해 주세요: 고양이", "e1")
            os.kill(server.server_pid, signal.SIGKILL)
            assert await asyncio.to_thread(server.wait_restarted, 1, 30)
            [turn] = await client.history(CONV)
            assert turn.assistant == first.text
            await ask(client, "두 번째", "e2")  # and it keeps working
            assert len(await client.history(CONV)) == 2
        stop.set()
        await task
        await r.aclose()


def test_refuses_a_data_dir_written_by_a_newer_server(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / STATE_FILE).write_text('{"version": [99, 0, 0]}')
    with pytest.raises(EmbeddedRedisError, match="newer"):
        EmbeddedRedis(tmp_path).start_sync()


async def test_serve_runs_embedded_redis_and_worker_and_chat_joins_them(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    env = serve_env(tmp_path / "d", tiny_model_dir, KULLM_GENERATION__MAX_NEW_TOKENS="12",
                    KULLM_QUEUE__HEARTBEAT_S="0.2", KULLM_QUEUE__RECLAIM_IDLE_S="1.0")
    with running_serve(env) as serve:
        assert "worker (local (tiny random model))" in serve.running
        chat = subprocess.run(_kullm("chat", "--once", "서울은 어때?"), env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert chat.returncode == 0, chat.stderr
        assert "Loading weights" not in chat.stderr  # it used the server and worker of serve
        assert await serve.stop(30) == 0
    # the history written through serve's worker is on disk (AOF) for the next start
    stored = await stored_turns(tmp_path / "d")
    assert [len(turns) for turns in stored.values()] == [1]
