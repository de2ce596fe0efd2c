"""Small helpers for core tests."""

from __future__ import annotations

import asyncio

from kullm_core.client import CoreClient
from kullm_core.wire import ConversationRef, DoneEvent, Event, UserRef

CONV = ConversationRef(platform="test", chat="c1", user="u1")
USER = UserRef(platform="test", id="u1", name="tester")


async def collect(client: CoreClient, job_id: str, timeout: float = 60) -> list[Event]:
    async def _run() -> list[Event]:
        return [e async for _, e in client.events(job_id)]

    return await asyncio.wait_for(_run(), timeout)


def deltas_text(events: list[Event]) -> str:
    """What a reader following the deltas shows (restarting on a new attempt)."""
    text, attempt = "", 0
    for e in events:
        if e.type == "started" and e.attempt != attempt:
            text, attempt = "", e.attempt
        elif e.type == "delta" and e.attempt == attempt:
            text += e.text
    return text


def done(events: list[Event]) -> DoneEvent:
    last = events[-1]
    assert isinstance(last, DoneEvent), f"expected done, got {last}"
    return last


async def ask(client: CoreClient, text: str, source: str, conv: ConversationRef = CONV,
              user: UserRef = USER) -> DoneEvent:
    sub = await client.submit(conv, user, text, source)
    assert sub.status == "queued", sub
    return done(await collect(client, sub.job_id))
