"""A request inside the local engine, and how its tokens become outputs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kullm_core.decode import IncrementalDecoder
from kullm_core.engine.base import EngineOutput, GenerationRequest
from kullm_core.engine.sampling import SlotRows

Outgoing = tuple["Running", EngineOutput | BaseException]
"""An output (or the error) the engine thread queued for a request's consumer."""


@dataclass
class Running:
    """A request in the engine: waiting, being prefilled (`slot` set) or decoding."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[EngineOutput | BaseException]
    decoder: IncrementalDecoder
    outbox: list[Outgoing]
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


def put_all(items: list[Outgoing]) -> None:
    """On the request's loop: hand a pass's outputs to their consumers."""
    for run, item in items:
        run.out.put_nowait(item)


def flush(outbox: list[Outgoing]) -> None:
    """Hand the outputs queued in `outbox` to their loops: one wake-up per loop per pass."""
    if not outbox:
        return
    items = list(outbox)
    outbox.clear()
    by_loop: dict[asyncio.AbstractEventLoop, list[Outgoing]] = {}
    for run, item in items:
        by_loop.setdefault(run.loop, []).append((run, item))
    for loop, pairs in by_loop.items():
        loop.call_soon_threadsafe(put_all, pairs)


def merge(a: EngineOutput, b: EngineOutput) -> EngineOutput:
    return EngineOutput(a.text + b.text, a.tokens + b.tokens, b.finish_reason)


@dataclass
class Launched:
    """A pass queued on the device: the runs its token rows belong to, in order, and the
    tokens, copied to the host without waiting (read them with `read`)."""

    rows: list[Running]
    tokens: torch.Tensor
    t0: float  # when the pass was queued
    decode: int  # rows that decoded (the rest completed a prompt)
    prompt_tokens: int
    slot_rows: SlotRows | None  # the decode rows' index it ran with
    _host: torch.Tensor | None = field(default=None, repr=False)
    _ready: Any = field(default=None, repr=False)  # torch.cuda.Event

    def __post_init__(self) -> None:
        if self.tokens.device.type == "cuda":  # into pinned memory, behind the queued kernels
            self._host = torch.empty(self.tokens.shape, dtype=self.tokens.dtype,
                                     pin_memory=True)
            self._host.copy_(self.tokens, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()

    def read(self) -> list[int]:
        """The tokens (waits for the pass where it still runs)."""
        if self._ready is None:
            return list(self.tokens.tolist())
        self._ready.synchronize()
        assert self._host is not None
        return list(self._host.tolist())
