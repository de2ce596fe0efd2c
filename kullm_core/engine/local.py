"""The local engine: one model, many conversations decoded together (step-level batching).

Why not transformers' `ContinuousBatchingManager`: it silently drops `repetition_penalty`
(the model card's anti-repetition advice), ignores stop strings and gives no result for a
cancelled request. This engine keeps one left-padded KV cache for all running requests
(the approach of TGI's `CausalLMBatch`): a new request is prefilled alone and joins the
batch between decode steps, a finished or cancelled one leaves it, and every step applies
each request's own repetition penalty, temperature and top-p to its row.

All torch work runs on one thread so the worker's event loop keeps serving Redis.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from kullm_core.decode import IncrementalDecoder
from kullm_core.engine.base import EngineBase, EngineOutput, GenerationRequest
from kullm_core.engine.sampling import RowSampler

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[EngineOutput | BaseException]
    decoder: IncrementalDecoder
    outbox: list[tuple[_Slot, EngineOutput | BaseException]]
    generated: int = 0
    pending_tokens: int = 0
    finished: bool = False
    ids: list[int] = field(default_factory=list)

    def emit(self, item: EngineOutput | BaseException) -> None:
        """Queue for the engine's next flush (one cross-thread wake-up per step, not per row)."""
        self.outbox.append((self, item))


def _put_all(items: list[tuple[_Slot, EngineOutput | BaseException]]) -> None:
    for slot, item in items:
        slot.out.put_nowait(item)


def _merge(a: EngineOutput, b: EngineOutput) -> EngineOutput:
    return EngineOutput(a.text + b.text, a.tokens + b.tokens, b.finish_reason)


class _Batch:
    """Running requests and their shared left-padded KV cache."""

    def __init__(self) -> None:
        self.slots: list[_Slot] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [B, T] 1 = real token
        self.pos: torch.Tensor | None = None  # [B] position of the next token
        self.next_ids: torch.Tensor | None = None  # [B] token to feed next

    def __len__(self) -> int:
        return len(self.slots)

    def tokens(self) -> int:
        return sum(len(s.request.prompt_ids) + s.request.params.max_new_tokens for s in self.slots)

    def add(self, slot: _Slot, cache: DynamicCache, length: int, first: torch.Tensor) -> None:
        dev = first.device
        if self.cache is None or not self.slots:
            self.slots, self.cache = [slot], cache
            self.mask = torch.ones(1, length, dtype=torch.long, device=dev)
            self.pos = torch.tensor([length], device=dev)
            self.next_ids = first.view(1)
            return
        assert self.mask is not None and self.pos is not None and self.next_ids is not None
        cur = self.mask.shape[1]
        width = max(cur, length)
        olds: list[Any] = list(self.cache.layers)
        news: list[Any] = list(cache.layers)
        for old, new in zip(olds, news, strict=True):
            k_old, v_old = _left_pad(old.keys, width), _left_pad(old.values, width)
            k_new, v_new = _left_pad(new.keys, width), _left_pad(new.values, width)
            old.keys = torch.cat([k_old, k_new], dim=0)
            old.values = torch.cat([v_old, v_new], dim=0)
        new_mask = torch.zeros(1, width, dtype=torch.long, device=dev)
        new_mask[:, width - length :] = 1
        old_mask = torch.nn.functional.pad(self.mask, (width - cur, 0))
        self.mask = torch.cat([old_mask, new_mask], dim=0)
        self.pos = torch.cat([self.pos, torch.tensor([length], device=dev)])
        self.next_ids = torch.cat([self.next_ids, first.view(1)])
        self.slots.append(slot)

    def keep(self, rows: list[int]) -> None:
        """Drop every row not in `rows`, then trim columns that are padding for all."""
        if not rows:
            self.slots, self.cache = [], None
            self.mask = self.pos = self.next_ids = None
            return
        assert self.cache is not None and self.mask is not None
        assert self.pos is not None and self.next_ids is not None
        idx = torch.tensor(rows, device=self.mask.device)
        self.slots = [self.slots[i] for i in rows]
        mask = self.mask.index_select(0, idx)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        self.mask = mask[:, start:]
        self.pos = self.pos.index_select(0, idx)
        self.next_ids = self.next_ids.index_select(0, idx)
        layer: Any
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, idx)[:, :, start:]
            layer.values = layer.values.index_select(0, idx)[:, :, start:]


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    extra = width - t.shape[-2]
    return torch.nn.functional.pad(t, (0, 0, extra, 0)) if extra > 0 else t


class LocalEngine(EngineBase):
    """`Engine` over a transformers causal LM in this process."""

    name = "local"

    def __init__(
        self, model: Any, tokenizer: Any, *, max_batch_size: int = 16,
        max_batch_tokens: int = 65536,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.device = next(model.parameters()).device
        self._incoming: queue.Queue[_Slot] = queue.Queue()
        self._waiting: list[_Slot] = []
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampler = RowSampler(self.device)
        self._outbox: list[tuple[_Slot, EngineOutput | BaseException]] = []
        self.steps = 0
        self.batch_rows = 0
        """Requests in the decode batch now (the `kullm_batch_slots_used` gauge reads it)."""

    async def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="kullm-engine", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self._cancelled.add(request_id)
        self._wake.set()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[EngineOutput]:
        if self._thread is None:
            raise RuntimeError("engine not started")
        out: asyncio.Queue[EngineOutput | BaseException] = asyncio.Queue()
        slot = _Slot(request, asyncio.get_running_loop(), out, IncrementalDecoder(self.tokenizer),
                     self._outbox)
        self._incoming.put(slot)
        self._wake.set()
        done = False
        try:
            while True:
                item = await out.get()
                # A consumer that fell behind takes everything ready as one output.
                while not isinstance(item, BaseException) and not item.finish_reason:
                    try:
                        nxt = out.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    item = nxt if isinstance(nxt, BaseException) else _merge(item, nxt)
                if isinstance(item, BaseException):
                    done = True
                    raise item
                if item.finish_reason:
                    done = True
                yield item
                if done:
                    return
        finally:
            if not done:
                self.cancel(request.id)

    # -- engine thread -----------------------------------------------------------------

    def _run(self) -> None:
        batch = _Batch()
        sampler = self._sampler = RowSampler(self.device)
        while not self._stopping.is_set():
            try:
                self._admit(batch, sampler)
                self.batch_rows = len(batch)
                self._flush()
                if not batch.slots:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                self._step(batch, sampler)
            except Exception as exc:  # fail the requests, keep the engine alive
                log.exception("engine step failed; failing %d requests", len(batch))
                for slot in batch.slots + self._waiting:
                    slot.emit(exc)
                batch = _Batch()
                sampler = self._sampler = RowSampler(self.device)
                self._waiting = []
            self._flush()
        for slot in batch.slots + self._waiting:
            slot.emit(EngineOutput("", 0, "cancelled"))
        self._flush()

    def _flush(self) -> None:
        if not self._outbox:
            return
        items = list(self._outbox)
        self._outbox.clear()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Slot, Any]]] = {}
        for slot, item in items:
            by_loop.setdefault(slot.loop, []).append((slot, item))
        for loop, pairs in by_loop.items():
            loop.call_soon_threadsafe(_put_all, pairs)

    def _take_cancelled(self, request_id: str) -> bool:
        with self._lock:
            if request_id in self._cancelled:
                self._cancelled.discard(request_id)
                return True
        return False

    def _admit(self, batch: _Batch, sampler: RowSampler) -> None:
        while True:
            try:
                self._waiting.append(self._incoming.get_nowait())
            except queue.Empty:
                break
        while self._waiting and len(batch) < self.max_batch_size:
            slot = self._waiting[0]
            need = len(slot.request.prompt_ids) + slot.request.params.max_new_tokens
            if batch.slots and batch.tokens() + need > self.max_batch_tokens:
                return
            self._waiting.pop(0)
            if self._take_cancelled(slot.request.id):
                slot.emit(EngineOutput("", 0, "cancelled"))
                continue
            self._prefill(batch, sampler, slot)

    @torch.inference_mode()
    def _prefill(self, batch: _Batch, sampler: RowSampler, slot: _Slot) -> None:
        ids = torch.tensor([slot.request.prompt_ids], device=self.device)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True,
                         logits_to_keep=1)
        slot.ids = list(slot.request.prompt_ids)
        row = sampler.add(slot.request.params, slot.ids, out.logits.shape[-1])
        token = sampler.sample(out.logits[:, -1, :], rows=[row])[0]
        batch.add(slot, cache, ids.shape[1], token)
        self._deliver(batch, len(batch) - 1, int(token))
        self._finish_rows(batch, sampler)

    @torch.inference_mode()
    def _step(self, batch: _Batch, sampler: RowSampler) -> None:
        assert batch.mask is not None and batch.pos is not None and batch.next_ids is not None
        ones = torch.ones(len(batch), 1, dtype=torch.long, device=batch.mask.device)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        out = self.model(
            input_ids=batch.next_ids.view(-1, 1),
            attention_mask=batch.mask,
            position_ids=batch.pos.view(-1, 1),
            past_key_values=batch.cache,
            use_cache=True,
        )
        self.steps += 1
        batch.pos = batch.pos + 1
        tokens = sampler.sample(out.logits[:, -1, :], rows=list(range(len(batch))))
        batch.next_ids = tokens
        for row, token in enumerate(tokens.tolist()):
            self._deliver(batch, row, int(token))
        self._finish_rows(batch, sampler)

    def _deliver(self, batch: _Batch, row: int, token: int) -> None:
        slot = batch.slots[row]
        params = slot.request.params
        slot.generated += 1
        if token in self.eos_ids:
            slot.finished = True
            slot.emit(EngineOutput(slot.decoder.flush(), slot.pending_tokens + 1, "stop"))
            return
        slot.ids.append(token)
        self._sampler.observe(row, token)
        text = slot.decoder.push(token)
        slot.pending_tokens += 1
        if slot.generated >= params.max_new_tokens:
            slot.finished = True
            text += slot.decoder.flush()
            slot.emit(EngineOutput(text, slot.pending_tokens, "length"))
        elif self._take_cancelled(slot.request.id):
            slot.finished = True
            text += slot.decoder.flush()
            slot.emit(EngineOutput(text, slot.pending_tokens, "cancelled"))
        elif text:
            slot.emit(EngineOutput(text, slot.pending_tokens))
            slot.pending_tokens = 0

    def _finish_rows(self, batch: _Batch, sampler: RowSampler) -> None:
        keep = [i for i, s in enumerate(batch.slots) if not s.finished]
        if len(keep) != len(batch):
            batch.keep(keep)
            sampler.keep(keep)
