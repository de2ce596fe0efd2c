"""A scripted engine for fast tests and adapter benchmarks: streams given text in pieces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from kullm_core.engine.base import EngineBase, EngineOutput, GenerationRequest


class ScriptedEngine(EngineBase):
    """Streams `reply(request)` a few characters at a time, `delay_s` apart.

    It runs the same worker code as the real engines, so queue, history, cancellation and
    delivery are exercised for real; only the text is chosen by the test.
    """

    name = "scripted"

    def __init__(
        self,
        reply: Callable[[GenerationRequest], str],
        *,
        chunk_chars: int = 3,
        delay_s: float = 0.0,
    ) -> None:
        self.reply = reply
        self.chunk_chars = chunk_chars
        self.delay_s = delay_s
        self._cancelled: set[str] = set()
        self.requests: list[GenerationRequest] = []

    def cancel(self, request_id: str) -> None:
        self._cancelled.add(request_id)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[EngineOutput]:
        self.requests.append(request)
        text = self.reply(request)
        limit = request.params.max_new_tokens
        pieces = [text[i : i + self.chunk_chars] for i in range(0, len(text), self.chunk_chars)]
        for n, piece in enumerate(pieces):
            if request.id in self._cancelled:
                self._cancelled.discard(request.id)
                yield EngineOutput("", 0, "cancelled")
                return
            if n >= limit:
                yield EngineOutput("", 0, "length")
                return
            yield EngineOutput(piece, 1)
            await asyncio.sleep(self.delay_s)
        yield EngineOutput("", 0, "stop")
