"""Prefill for the local engine: arrivals together, long prompts in bounded chunks.

Simultaneous arrivals are prefilled as one left-padded batch (what a static `generate` batch
does), so they all get their first token after one pass instead of one prompt after another.
While other requests are decoding, a pass may take about one decode step: a prompt longer than
that is prefilled in chunks (batch 1, its own cache), one chunk between two decode steps, so a
1,000-token join delays running streams by one chunk, not by the whole prompt. The chunk size
follows the measured times (`Pacer`), capped by `chunk_tokens`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

MIN_CHUNK = 8
"""A smaller chunk costs a pass's fixed overhead (every weight read once) for too little work."""


@dataclass
class Prefilled:
    """Rows ready to join the batch: their cache, left-padded mask [n, L], last logits [n, V]."""

    cache: DynamicCache
    mask: torch.Tensor
    logits: torch.Tensor


@dataclass
class Filling:
    """A long prompt being prefilled chunk by chunk."""

    ids: torch.Tensor  # [1, L]
    cache: DynamicCache
    done: int = 0

    @property
    def left(self) -> int:
        return int(self.ids.shape[1]) - self.done


class Pacer:
    """Sizes chunks so one chunk takes ~`share` of a decode step (running streams then wait at
    most ~(1 + share) steps for their next token). A chunk's time is ~a + n*b; sizing the next
    one as n * target / time converges to (target - a) / b, the largest chunk that fits."""

    def __init__(self, cap: int, share: float = 0.75) -> None:
        self.cap, self.share = max(cap, MIN_CHUNK), share
        self.step_s = 0.0  # decode step, moving average
        self.rate = 0.0  # prefill tokens/s of the last whole pass
        self.chunk = 0  # tokens, once a chunk was measured

    def step_took(self, seconds: float) -> None:
        self.step_s = seconds if not self.step_s else 0.7 * self.step_s + 0.3 * seconds

    def pass_took(self, tokens: int, seconds: float) -> None:
        if seconds > 0:
            self.rate = tokens / seconds

    def chunk_took(self, tokens: int, seconds: float) -> None:
        if self.step_s and seconds > 0:
            self.chunk = self._clamp(tokens * self.share * self.step_s / seconds)

    def budget(self) -> int:
        """Tokens one prefill pass may take while requests are decoding."""
        if self.chunk:
            return self.chunk
        if self.rate and self.step_s:  # a whole pass runs faster per token than a small chunk
            return self._clamp(0.5 * self.rate * self.share * self.step_s)
        return self.cap

    def _clamp(self, n: float) -> int:
        return max(MIN_CHUNK, min(self.cap, int(n)))


class Prefiller:
    """Runs prefill passes on the engine thread (never concurrently with a decode step)."""

    def __init__(self, model: Any, device: torch.device, chunk_tokens: int) -> None:
        self.model, self.device = model, device
        self.pacer = Pacer(chunk_tokens)
        self.passes = 0

    def _sync(self) -> None:
        if self.device.type == "cuda":  # time the work, not its launch
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def group(self, prompts: list[list[int]]) -> Prefilled:
        """One pass over prompts left-padded to the longest."""
        t0 = time.perf_counter()
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p, device=self.device)
            mask[row, width - len(p):] = 1
        cache = DynamicCache(config=self.model.config)
        padded = any(len(p) != width for p in prompts)
        out = self.model(
            input_ids=ids, attention_mask=mask if padded else None,
            position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0) if padded else None,
            past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :]
        self._sync()
        self.passes += 1
        self.pacer.pass_took(sum(len(p) for p in prompts), time.perf_counter() - t0)
        return Prefilled(cache, mask, logits)

    def start(self, prompt: list[int]) -> Filling:
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        return Filling(ids, DynamicCache(config=self.model.config))

    @torch.inference_mode()
    def chunk(self, f: Filling, tokens: int, timed: bool) -> Prefilled | None:
        """Prefill the next `tokens` of `f`; the result once the whole prompt is in its cache.
        `timed`: the pass ran between decode steps, so it sizes the next chunk."""
        t0 = time.perf_counter()
        end = min(f.done + max(tokens, 1), int(f.ids.shape[1]))
        pos = torch.arange(f.done, end, device=self.device).view(1, -1)
        out = self.model(input_ids=f.ids[:, f.done:end], position_ids=pos,
                         past_key_values=f.cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :]
        self._sync()
        self.passes += 1
        seconds = time.perf_counter() - t0
        if timed:
            self.pacer.chunk_took(end - f.done, seconds)
        f.done = end
        if f.left:
            return None
        mask = torch.ones(1, end, dtype=torch.long, device=self.device)
        return Prefilled(f.cache, mask, logits)
