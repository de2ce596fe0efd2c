"""A request inside the local engine, and how its tokens become outputs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from kullm_core.decode import IncrementalDecoder
from kullm_core.engine.base import EngineOutput, GenerationRequest


@dataclass
class Running:
    """A request in the engine: waiting, being prefilled (`slot` set) or decoding."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[EngineOutput | BaseException]
    decoder: IncrementalDecoder
    outbox: list[tuple[Running, EngineOutput | BaseException]]
    slot: int = -1
    prefilled: int = 0  # prompt tokens in the slot's KV
    length: int = 0  # tokens in the slot's KV
    max_new: int = 0
    generated: int = 0
    pending_tokens: int = 0
    finished: bool = False

    @property
    def prompt(self) -> list[int]:
        return self.request.prompt_ids

    def emit(self, item: EngineOutput | BaseException) -> None:
        """Queue for the engine's next flush (one cross-thread wake-up per pass, not per row)."""
        self.outbox.append((self, item))

    def take(self, token: int, eos: bool, cancelled: Callable[[str], bool]) -> None:
        """The next sampled token: text out (Korean-safe), or the end of the reply."""
        self.generated += 1
        if eos:
            self.finished = True
            self.emit(EngineOutput(self.decoder.flush(), self.pending_tokens + 1, "stop"))
            return
        text = self.decoder.push(token)
        self.pending_tokens += 1
        if self.generated >= self.max_new:
            self.finished = True
            text += self.decoder.flush()
            self.emit(EngineOutput(text, self.pending_tokens, "length"))
        elif cancelled(self.request.id):
            self.finished = True
            text += self.decoder.flush()
            self.emit(EngineOutput(text, self.pending_tokens, "cancelled"))
        elif text:
            self.emit(EngineOutput(text, self.pending_tokens))
            self.pending_tokens = 0


def put_all(items: list[tuple[Running, EngineOutput | BaseException]]) -> None:
    """On the request's loop: hand a pass's outputs to their consumers."""
    for run, item in items:
        run.out.put_nowait(item)


def merge(a: EngineOutput, b: EngineOutput) -> EngineOutput:
    return EngineOutput(a.text + b.text, a.tokens + b.tokens, b.finish_reason)
