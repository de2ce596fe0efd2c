"""The operations endpoint of one process: `/metrics`, `/healthz`, `/readyz`.

One small HTTP server on the process's event loop (`[ops]` host and port; port 0 = off):

- `GET /metrics`: prometheus-client's registry (gauges that live in Redis are refreshed first);
- `GET /healthz`: 200 while the process (its event loop) answers: the liveness probe;
- `GET /readyz`: 200 when every registered readiness check passes, else 503 and one line
  naming the failing checks: the readiness probe.

Checks are registered by the parts of the process as they come up (`READINESS.registered`,
`OpsServer.watch_worker`); a name given to `OpsServer(expect=...)` fails as "starting" until
a check of that name is registered, so a worker loading its model is alive but not ready.

Why not prometheus-client's own `start_http_server`: it serves from a thread and only
metrics, while readiness needs the loop (an async Redis ping). Why not aiohttp: a worker-only
or Telegram-only install does not have it; probes and scrapes need only a plain GET.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from kullm_core.metrics import WorkerGauges
from kullm_core.settings import OpsSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from kullm_core.worker import Worker

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[object]]
"""Passes unless it raises or returns False (or a string: the reason it fails)."""

CHECK_TIMEOUT_S = 2.0
_READ_TIMEOUT_S = 5.0
_MAX_HEADER_LINES = 100


class Readiness:
    """Named readiness checks of one process. The same name may be registered twice (in
    `kullm serve` the worker and each adapter check Redis); every registration counts."""

    def __init__(self) -> None:
        self._checks: dict[int, tuple[str, Check]] = {}
        self._ids = itertools.count()

    def add(self, name: str, check: Check) -> int:
        handle = next(self._ids)
        self._checks[handle] = (name, check)
        return handle

    def remove(self, handle: int) -> None:
        self._checks.pop(handle, None)

    @contextlib.contextmanager
    def registered(self, name: str, check: Check) -> Iterator[None]:
        handle = self.add(name, check)
        try:
            yield
        finally:
            self.remove(handle)

    def names(self) -> set[str]:
        return {name for name, _ in self._checks.values()}

    async def failing(self, timeout_s: float = CHECK_TIMEOUT_S) -> list[str]:
        """`name (reason)` of every check that does not pass, run concurrently."""
        checks = list(self._checks.values())
        results = await asyncio.gather(*(_run(c, timeout_s) for _, c in checks))
        return [f"{name} ({why})" for (name, _), why in zip(checks, results, strict=True)
                if why is not None]


async def _run(check: Check, timeout_s: float) -> str | None:
    try:
        async with asyncio.timeout(timeout_s):
            result = await check()
    except TimeoutError:
        return f"no answer in {timeout_s:g} s"
    except Exception as exc:
        return type(exc).__name__
    if result is False:
        return "failed"
    return result if isinstance(result, str) else None


READINESS = Readiness()
"""The process's checks (like prometheus-client's default REGISTRY)."""


def redis_ping(redis: Redis) -> Check:
    async def check() -> object:
        return bool(await redis.ping())

    return check


def heartbeat_fresh(worker: Worker) -> Check:
    """This worker's health key exists and was written within three heartbeats."""

    async def check() -> object:
        raw = await worker.r.get(worker.keys.worker(worker.id))
        if raw is None:
            return "no heartbeat"
        age = time.time() - float(json.loads(raw).get("at", 0))
        return "heartbeat stale" if age > 3 * worker.s.queue.heartbeat_s else True

    return check


class OpsServer:
    """`async with OpsServer(settings.ops, checks={"redis": ...}) as ops:` serves the three
    endpoints (nothing when `port` is 0)."""

    def __init__(
        self,
        settings: OpsSettings,
        checks: dict[str, Check] | None = None,
        *,
        expect: Iterable[str] = (),
        readiness: Readiness | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.settings = settings
        self.readiness = readiness or READINESS
        self.registry = registry
        self.port: int | None = None
        """The bound port once started (None when off)."""
        self._refresh: list[Callable[[], Awaitable[None]]] = []
        self._handles = [self.readiness.add(n, c) for n, c in (checks or {}).items()]
        self._expected = set(expect)
        self._server: asyncio.Server | None = None

    # -- what the process registers ------------------------------------------------------

    def add_check(self, name: str, check: Check) -> None:
        """Readiness now also needs `check`, until the server stops."""
        self._handles.append(self.readiness.add(name, check))

    def add_refresh(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run `refresh` before each scrape (gauges whose values live elsewhere)."""
        self._refresh.append(refresh)

    def watch_worker(self, worker: Worker) -> None:
        """Ready = Redis answers and this worker heartbeats; its gauges on every scrape."""
        self.add_check("redis", redis_ping(worker.r))
        self.add_check("worker", heartbeat_fresh(worker))
        self.add_refresh(WorkerGauges(worker).refresh)

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> OpsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        s = self.settings
        if not s.port or self._server is not None:
            return
        self._server = await asyncio.start_server(self._handle, s.host, s.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("ops: /metrics /healthz /readyz on %s:%d", s.host, self.port)

    async def stop(self) -> None:
        for handle in self._handles:
            self.readiness.remove(handle)
        self._handles = []
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    # -- HTTP ----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                method, path = await _read_request(reader)
            status, ctype, body = await self._answer(method, path)
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode("ascii") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError) as exc:
            log.debug("ops: request dropped (%s)", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _answer(self, method: str, path: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text, b"GET only\n"
        if path == "/healthz":
            return "200 OK", text, b"ok\n"
        if path == "/readyz":
            failing = await self.failing()
            if failing:
                return "503 Service Unavailable", text, _line("not ready: " + ", ".join(failing))
            return "200 OK", text, b"ready\n"
        if path == "/metrics":
            for refresh in self._refresh:
                await _refresh(refresh)
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        return "404 Not Found", text, b"not found: /metrics /healthz /readyz\n"

    async def failing(self) -> list[str]:
        """What `/readyz` reports: the checks that do not pass now."""
        missing = sorted(self._expected - self.readiness.names())
        return [f"{name} (starting)" for name in missing] + await self.readiness.failing()


def _line(text: str) -> bytes:
    return (text[:500] + "\n").encode("utf-8")


async def _refresh(refresh: Callable[[], Awaitable[Any]]) -> None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await refresh()
    except Exception as exc:  # a scrape still answers, with the last values
        log.debug("ops: metrics refresh failed (%s)", exc)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    line = (await reader.readline()).decode("latin-1").strip()
    parts = line.split()
    if len(parts) < 2:
        raise ValueError("not an HTTP request")
    for _ in range(_MAX_HEADER_LINES):
        if (await reader.readline()) in (b"\r\n", b"\n", b""):
            break
    return parts[0].upper(), parts[1].split("?", 1)[0]
