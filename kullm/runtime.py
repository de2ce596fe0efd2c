"""Assembling the running parts: Redis (given or embedded), worker, adapters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from kullm_core.embedded import EmbeddedRedis, running_url
from kullm_core.errors import ConfigError, EmbeddedRedisBusy, RedisUnavailable
from kullm_core.settings import Settings

log = logging.getLogger(__name__)


Embedded = Literal["start", "reuse", "reuse_or_start"]


@asynccontextmanager
async def open_redis(
    settings: Settings, *, embedded: Embedded = "reuse_or_start"
) -> AsyncIterator[Redis]:
    """Connect to `redis.url`, or (when it is empty) to the embedded server of this data dir.

    `embedded`: "start" runs one here (an error if another process runs it), "reuse" only
    joins a running one (an error if none), "reuse_or_start" joins or else runs one here. The
    server stops when this context exits, after everything using the connection is done.

    Raises:
        RedisUnavailable: one line naming the URL, when the server does not answer.
    """
    server: EmbeddedRedis | None = None
    url = settings.redis.url
    if not url and embedded != "start":
        url = running_url(settings.data_dir)
        if url:
            log.info("using the embedded Valkey of a running kullm (%s)", url)
        elif embedded == "reuse":
            raise RedisUnavailable(
                f"no Redis: `redis.url` is empty and no `kullm serve` runs on {settings.data_dir} "
                "(start it, or set redis.url / KULLM_REDIS__URL)"
            )
    if not url:
        server = EmbeddedRedis(
            settings.data_dir, settings.redis.server_binary, settings.redis.prefer_system_server,
        )
        try:
            url = await server.start()
        except EmbeddedRedisBusy:
            raise EmbeddedRedisBusy(
                f"another kullm process (`kullm serve` or `kullm chat`) already runs the "
                f"embedded Redis of {settings.data_dir}: stop it first, or join it with "
                "`kullm chat` / `kullm worker`"
            ) from None
    redis = connect(url)
    try:
        try:
            await redis.ping()
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"cannot reach Redis at {_safe(url)}: {exc}") from None
        yield redis
    finally:
        await redis.aclose()
        if server is not None:
            await server.stop()


def _safe(url: str) -> str:
    """The URL without a password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest


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
