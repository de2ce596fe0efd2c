"""Assembling the running parts: Redis (given or embedded), worker, adapters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis

from kullm_core.embedded import EmbeddedRedis, running_url
from kullm_core.errors import ConfigError
from kullm_core.settings import Settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_redis(settings: Settings, *, reuse_running: bool = False) -> AsyncIterator[Redis]:
    """Connect to `redis.url`, or to an embedded server (reused or started here)."""
    embedded: EmbeddedRedis | None = None
    url = settings.redis.url
    if not url and reuse_running:
        url = running_url(Path(settings.data_dir))
        if url:
            log.info("using the embedded Valkey of a running `kullm serve` (%s)", url)
    if not url:
        embedded = EmbeddedRedis(
            Path(settings.data_dir), settings.redis.server_binary,
            settings.redis.prefer_system_server,
        )
        url = await embedded.start()
    redis = connect(url)
    try:
        await redis.ping()
        yield redis
    finally:
        await redis.aclose()
        if embedded is not None:
            await embedded.stop()


# Every reply being followed holds a connection during its blocking read: a large pool that
# waits when exhausted instead of failing the worker's writes.
_POOL_OPTIONS: dict[str, Any] = {"max_connections": 2048, "timeout": 30}
# Blocking reads use at most 2 s (XREAD/XREADGROUP BLOCK), well inside the socket timeout.
# Retried commands are safe: enqueue dedupes, the commit script is guarded by a marker.
_CLIENT_OPTIONS: dict[str, Any] = {
    "health_check_interval": 30, "socket_timeout": 15, "retry_on_timeout": True,
}


def connect(url: str) -> Redis:
    """A client for `url`. `redis+sentinel://h1:26379,h2:26379/<master>[/<db>]` asks the
    Sentinels for the current master and follows failovers."""
    if not url.startswith("redis+sentinel://"):
        pool = BlockingConnectionPool.from_url(url, **_POOL_OPTIONS, **_CLIENT_OPTIONS)
        return Redis(connection_pool=pool)
    from redis.asyncio.sentinel import Sentinel

    hosts_part, _, rest = url[len("redis+sentinel://"):].partition("/")
    master, _, db = rest.partition("/")
    if not hosts_part or not master:
        raise ConfigError("setting `redis.url`: sentinel URL needs hosts and a master name, "
                          "e.g. redis+sentinel://h1:26379,h2:26379/mymaster/0")
    hosts = []
    for item in hosts_part.split(","):
        host, _, port = item.rpartition(":")
        hosts.append((host or item, int(port or 26379)))
    sentinel = Sentinel(hosts, socket_timeout=5)
    return sentinel.master_for(
        master, db=int(db or 0), max_connections=_POOL_OPTIONS["max_connections"],
        **_CLIENT_OPTIONS,
    )


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
