"""The reply channel: one Redis Stream of events per job, written by the worker (and the
queue's scripts), read by adapters. Its lifetime: `REPLY_TTL_BEFORE_DONE_S` until the job's
terminal event, then `queue.reply_ttl_s` (set by the commit script)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from kullm_core.keys import REPLY_TTL_BEFORE_DONE_S
from kullm_core.queue.base import QueueRole
from kullm_core.redis_text import as_str
from kullm_core.wire import TERMINAL, Event, parse_event

log = logging.getLogger(__name__)


class ReplyChannel(QueueRole):
    async def emit(self, job_id: str, event: Event) -> str:
        key = self.keys.reply(job_id)
        if event.type in ("started", "queued"):
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.xadd(key, {"e": event.dumps()})
                pipe.expire(key, REPLY_TTL_BEFORE_DONE_S)
                entry, _ = await pipe.execute()
            return as_str(entry)
        return as_str(await self.r.xadd(key, {"e": event.dumps()}))

    async def last_event(self, job_id: str) -> Event | None:
        """The job's latest reply event; None when its stream is gone or unreadable."""
        last: Any = await self.r.xrevrange(self.keys.reply(job_id), "+", "-", count=1)
        if not last:
            return None
        try:
            return parse_event(last[0][1].get(b"e") or last[0][1].get("e") or b"")
        except ValueError:
            return None

    async def events(
        self, job_id: str, last_id: str = "0-0", block_ms: int = 2000
    ) -> AsyncIterator[tuple[str, Event]]:
        """Yield a job's reply events from after `last_id` until `done` or `error`.

        Resumable: pass the last id a previous reader handled.
        """
        key = self.keys.reply(job_id)
        while True:
            resp: Any = await self.r.xread({key: last_id}, count=256, block=block_ms)
            if not resp and not await self.r.exists(key):
                log.warning("job %s: reply stream is gone (expired); stopping", job_id)
                return
            for _stream, entries in resp or []:
                for entry_id, fields in entries:
                    last_id = as_str(entry_id)
                    raw = fields.get(b"e") or fields.get("e")
                    try:
                        event = parse_event(raw)
                    except ValueError:
                        log.warning("job %s: unreadable reply event %s", job_id, last_id)
                        continue
                    yield last_id, event
                    if event.type in TERMINAL:
                        return
