"""Shared fixtures: a real Valkey server, the tiny model, settings, client and worker.

Nothing is mocked: Redis is a real server on a unix socket in a temp dir, the model is the
tiny random-weight Llama loaded through the same code path as KULLM3.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from kullm_core.client import CoreClient
from kullm_core.embedded import EmbeddedRedis
from kullm_core.settings import Settings, load_settings
from kullm_core.worker import Worker

# torch on one thread here and in every process a test starts (they inherit it): the tiny
# model's ops are too small to gain from more, and on a shared machine a thread pool waits at
# every op for its thread on a busy core (answers twice as slow as on one thread).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Any:
    """Tests that run `kullm`'s main in this process get its log handler on the root logger,
    writing to that test's captured stderr: later tests would log into a closed file."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = saved


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = EmbeddedRedis(tmp_path_factory.mktemp("valkey"))
    server.start_sync()
    yield server
    server.stop_sync()


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_url)
    await r.flushall()
    yield r
    await r.aclose()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kullm_core.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    from kullm_core.engine.loader import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> Any:
    from kullm_core.engine.loader import load_model

    return load_model(str(tiny_model_dir), load_settings(model={"path": str(tiny_model_dir)}))


@pytest.fixture(scope="session")
async def tiny_engine(tiny_model: Any, tiny_tokenizer: Any) -> AsyncIterator[Any]:
    from kullm_core.engine.local import LocalEngine

    engine = LocalEngine(tiny_model, tiny_tokenizer, max_batch_size=16)
    await engine.start()
    yield engine
    await engine.stop()


def test_settings_for(redis_url: str, model_dir: Path, data_dir: Path, **over: Any) -> Settings:
    """Settings for tests: greedy, short replies, fast heartbeats, no rate limits."""
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "redis": {"url": redis_url},
        "model": {"path": str(model_dir)},
        "generation": {"temperature": 0.0, "max_new_tokens": 24, "repetition_penalty": 1.0},
        "queue": {"heartbeat_s": 0.2, "reclaim_idle_s": 1.0, "coalesce_ms": 20,
                  "shutdown_grace_s": 5.0, "job_timeout_s": 60.0},
        "limits": {"requests_per_minute": 0, "daily_tokens": 0},
    }
    for section, values in over.items():
        if isinstance(values, dict):
            base.setdefault(section, {}).update(values)
        else:
            base[section] = values
    return load_settings(None, **base)


test_settings_for.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
def settings(redis_url: str, tiny_model_dir: Path, tmp_path: Path) -> Settings:
    return test_settings_for(redis_url, tiny_model_dir, tmp_path)


@pytest.fixture
async def client(redis: Redis, settings: Settings) -> AsyncIterator[CoreClient]:
    async with CoreClient(redis, settings) as c:
        yield c


MakeWorker = Callable[..., AbstractAsyncContextManager[Worker]]


@pytest.fixture
def make_worker(
    settings: Settings, redis: Redis, tiny_tokenizer: Any, tiny_engine: Any
) -> MakeWorker:
    """`async with make_worker(engine=..., settings=..., worker_id=...) as w:` runs a worker."""

    @asynccontextmanager
    async def _make(
        engine: Any = None, settings: Settings | None = None, worker_id: str | None = None,
    ) -> AsyncIterator[Worker]:
        eng = engine or tiny_engine
        if eng is not tiny_engine:
            await eng.start()
        w = Worker(settings or _settings, redis, eng, tiny_tokenizer, worker_id)
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        try:
            yield w
        finally:
            stop.set()
            await task
            if eng is not tiny_engine:
                await eng.stop()

    _settings = settings
    return _make


@pytest.fixture
async def worker(make_worker: MakeWorker) -> AsyncIterator[Worker]:
    async with make_worker() as w:
        yield w
