"""RedisGuard.call (the worker's and every reply delivery's retry loop): it rides out Redis
trouble, gives up where told, and never swallows a cancel (real Redis, and a port where
nothing listens)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from kullm_core.redis_checks import RedisGuard


def _dead_url() -> str:
    """A Redis URL on a local port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


async def test_call_rides_out_an_outage_with_one_warning_and_one_recovery_line(
    redis: Redis, caplog: pytest.LogCaptureFixture,
) -> None:
    dead = Redis.from_url(_dead_url())
    calls = 0

    async def op() -> Any:
        nonlocal calls
        calls += 1
        # the first three calls meet a server that is away, then it is back
        return await (dead if calls <= 3 else redis).set("k", "v")

    guard = RedisGuard("test")
    with caplog.at_level(logging.INFO, logger="kullm_core.redis_checks"):
        assert await guard.call(op, "writing k") is True
    await dead.aclose()
    assert calls == 4
    assert await redis.get("k") == b"v"
    lines = [r for r in caplog.records if r.name == "kullm_core.redis_checks"]
    assert [r.levelname for r in lines] == ["WARNING", "INFO"]
    assert "writing k" in lines[0].getMessage()
    assert "3 failed calls" in lines[1].getMessage()


async def test_call_gives_up_at_its_budget_with_the_redis_error() -> None:
    dead = Redis.from_url(_dead_url())
    guard = RedisGuard("test")
    with pytest.raises(RedisConnectionError):
        await guard.call(lambda: dead.get("k"), "reading k", budget_s=0.3)
    await dead.aclose()
    assert guard.down.active


def _turns_cancel_into_connection_error(redis: Redis) -> Callable[[], Awaitable[Any]]:
    """A blocking read that, like redis-py can, reports a cancel landing mid-read as its own
    connection error; counts its calls."""

    async def op() -> Any:
        op.calls += 1  # type: ignore[attr-defined]
        if op.calls > 1:  # type: ignore[attr-defined]
            return "retried"  # the cancel was swallowed
        try:
            return await redis.blpop(["never-pushed"], timeout=30)
        except asyncio.CancelledError:
            raise RedisConnectionError("Connection closed by server.") from None

    op.calls = 0  # type: ignore[attr-defined]
    return op


async def test_a_cancel_during_a_read_ends_the_call_instead_of_a_retry(redis_url: str) -> None:
    reader = Redis.from_url(redis_url)
    op = _turns_cancel_into_connection_error(reader)
    task = asyncio.create_task(RedisGuard("test").call(op, "reading"))
    await asyncio.sleep(0.2)  # the read is blocked in the server
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await reader.aclose()
    assert op.calls == 1  # type: ignore[attr-defined]
