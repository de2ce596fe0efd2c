"""The engine seam."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, Self

if TYPE_CHECKING:  # the engines import without pydantic (bench/gpu_check.py on a bare GPU image)
    from kullm_core.settings import GenerationSettings


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None

    @classmethod
    def from_settings(
        cls, g: GenerationSettings, max_new_tokens: int | None = None
    ) -> SamplingParams:
        return cls(
            max_new_tokens=max_new_tokens or g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            repetition_penalty=g.repetition_penalty,
            no_repeat_ngram_size=g.no_repeat_ngram_size,
            stop_strings=tuple(g.stop_strings),
            seed=g.seed,
        )

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class GenerationRequest:
    """A built prompt. `prompt_ids` for local engines; `messages` (system prompt + fitted
    history, the same conversation) for engines that take chat messages."""

    id: str
    prompt_ids: list[int]
    messages: list[dict[str, str]] = field(default_factory=list)
    params: SamplingParams = SamplingParams()


@dataclass(frozen=True)
class EngineOutput:
    """A piece of generated text. `tokens` counts tokens behind it; the last output of a
    request has `finish_reason` set (`stop` on end-of-sequence, `length`, `cancelled`)."""

    text: str
    tokens: int = 0
    finish_reason: Literal["stop", "length", "cancelled", "stop_string"] | None = None


AUTO_SLOTS_CPU = 16
"""The local engine's concurrency on the CPU when `batching.max_batch_size` is 0 (auto)."""
AUTO_SLOTS_GPU = 64
"""...and at most this many on a GPU: as many as its free memory holds (`engine/memory.py`)."""


class Engine(Protocol):
    """Generates. Never touches Redis, history, or platforms."""

    name: str
    slots: int | None
    """Requests it serves well at once (the worker's concurrency); None: the local engine's
    `batching.max_batch_size`."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[EngineOutput]:
        """Stream a request's output. Breaking out of the iteration cancels it."""
        ...

    def cancel(self, request_id: str) -> None:
        """Stop a request within a few decode steps; its stream ends with `cancelled`."""
        ...


class EngineBase:
    """`async with engine:` for every engine: start on enter, stop on exit."""

    slots: int | None = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
