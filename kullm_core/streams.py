"""One reader for the reply streams of every reply an adapter delivers.

`CoreClient.events` holds a Redis connection in a blocking XREAD per reply; fifty replies
streaming at once would take fifty connections of the pool the whole process shares. Here one
XREAD over all followed streams (one connection) feeds a queue per reply. Redis errors are
retried with backoff from the last entry read, so a hiccup delays a reply and never loses it.
Get one from `CoreClient.reply_streams()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kullm_core.keys import Keys
from kullm_core.redis_checks import raise_if_cancelling
from kullm_core.redis_text import as_str
from kullm_core.wire import TERMINAL, Event, parse_event

log = logging.getLogger(__name__)


@dataclass
class _Follower:
    job_id: str
    last_id: str
    queue: asyncio.Queue[tuple[str, Event]] = field(default_factory=asyncio.Queue)


class ReplyStreams:
    """Follow many jobs' reply events over one connection (`async with`, then `follow`)."""

    def __init__(self, redis: Redis, keys: Keys, block_ms: int = 250) -> None:
        self.redis = redis
        self.keys = keys
        self.block_ms = block_ms
        self._by_key: dict[str, _Follower] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def __aenter__(self) -> ReplyStreams:
        self._task = asyncio.create_task(self._read_loop(), name="reply-streams")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            # the flag as well as the cancel: redis-py can turn a cancel that lands during
            # its own socket timeout into a TimeoutError (an OSError), caught below
            self._closing = True
            self._wake.set()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def follow(self, job_id: str, last_id: str = "0-0") -> AsyncIterator[tuple[str, Event]]:
        """A job's reply events after `last_id`, ending with done or error."""
        key = self.keys.reply(job_id)
        follower = _Follower(job_id, last_id)
        self._by_key[key] = follower
        self._wake.set()
        try:
            while True:
                entry_id, event = await follower.queue.get()
                yield entry_id, event
                if event.type in TERMINAL:
                    return
        finally:
            if self._by_key.get(key) is follower:
                del self._by_key[key]

    async def _read_loop(self) -> None:
        failures = 0
        while not self._closing:
            if not self._by_key:
                self._wake.clear()
                await self._wake.wait()
                continue
            streams: dict[Any, Any] = {key: f.last_id for key, f in self._by_key.items()}
            try:
                resp: Any = await self.redis.xread(streams, count=256, block=self.block_ms)
            except (RedisError, OSError) as exc:
                raise_if_cancelling(exc)
                if self._closing:
                    return
                failures += 1
                delay = min(5.0, 0.1 * 2 ** failures)
                log.warning("reading reply streams failed (%s); retry in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            for raw_key, entries in resp or []:
                key = as_str(raw_key)
                follower = self._by_key.get(key)
                if follower is not None:
                    self._deliver(follower, entries)

    @staticmethod
    def _deliver(follower: _Follower, entries: list[tuple[bytes | str, dict[Any, Any]]]) -> None:
        for raw_id, fields in entries:
            entry_id = as_str(raw_id)
            follower.last_id = entry_id
            raw = fields.get(b"e") or fields.get("e") or b""
            try:
                event = parse_event(raw)
            except ValueError:
                log.warning("job %s: unreadable reply event %s", follower.job_id, entry_id)
                continue
            with contextlib.suppress(asyncio.QueueFull):
                follower.queue.put_nowait((entry_id, event))
