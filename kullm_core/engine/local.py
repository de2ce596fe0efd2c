"""The local engine: one model, many conversations decoded together (step-level batching).

Why not transformers' `ContinuousBatchingManager`: it silently drops `repetition_penalty`
(the model card's anti-repetition advice), ignores stop strings and gives no result for a
cancelled request. This engine keeps one left-padded KV cache for all running requests
(`engine/batch.py`): requests that arrive together are prefilled together and join the
batch between decode steps, each releasing its first token as soon as its pass is done; a
long prompt that arrives while others decode is prefilled in chunks of about one step's time
between their steps (`engine/prefill.py`). A finished or cancelled request leaves the batch,
and every step applies each request's own repetition penalty, temperature and top-p to its row.

All torch work runs on one thread so the worker's event loop keeps serving Redis.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch

from kullm_core.decode import IncrementalDecoder
from kullm_core.engine.base import EngineBase, EngineOutput, GenerationRequest
from kullm_core.engine.batch import Batch
from kullm_core.engine.prefill import Filling, Prefilled, Prefiller
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


class LocalEngine(EngineBase):
    """`Engine` over a transformers causal LM in this process."""

    name = "local"

    def __init__(
        self, model: Any, tokenizer: Any, *, max_batch_size: int = 16,
        max_batch_tokens: int = 65536, max_prefill_tokens: int = 16384,
        prefill_chunk_tokens: int = 1024, arrival_window_s: float = 0.002,
    ) -> None:
        """`max_prefill_tokens`: padded tokens of one prefill pass while nothing decodes;
        `prefill_chunk_tokens`: the most a pass takes while requests decode (the pacer keeps
        it to about one step's time); `arrival_window_s`: how long an idle engine waits after
        the first arrival for the ones that came with it (they are prefilled together)."""
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.arrival_window_s = arrival_window_s
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
        self.prefiller = Prefiller(model, self.device, prefill_chunk_tokens)
        self._filling: tuple[_Slot, Filling] | None = None
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
        batch: Batch[_Slot] = Batch()
        sampler = self._sampler = RowSampler(self.device)
        while not self._stopping.is_set():
            try:
                admitted = self._admit(batch, sampler)
                self.batch_rows = len(batch)
                self._flush()  # first tokens go out before the next pass
                if batch.slots:
                    self._step(batch, sampler)
                elif not admitted and self._filling is None:
                    if self._wake.wait(0.5) and self.arrival_window_s > 0:
                        time.sleep(self.arrival_window_s)
                    self._wake.clear()
                    continue
            except Exception as exc:  # fail the requests, keep the engine alive
                log.exception("engine step failed; failing %d requests", len(batch))
                for slot in self._pending(batch):
                    slot.emit(exc)
                batch = Batch()
                sampler = self._sampler = RowSampler(self.device)
                self._waiting, self._filling = [], None
            self._flush()
        for slot in self._pending(batch):
            slot.emit(EngineOutput("", 0, "cancelled"))
        self._flush()

    def _pending(self, batch: Batch[_Slot]) -> list[_Slot]:
        filling = [self._filling[0]] if self._filling else []
        return batch.slots + filling + self._waiting

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

    def _collect(self) -> None:
        """New arrivals into `_waiting`; cancelled waiting requests end here."""
        while True:
            try:
                self._waiting.append(self._incoming.get_nowait())
            except queue.Empty:
                break
        for slot in [s for s in self._waiting if self._take_cancelled(s.request.id)]:
            self._waiting.remove(slot)
            slot.emit(EngineOutput("", 0, "cancelled"))

    def _admit(self, batch: Batch[_Slot], sampler: RowSampler) -> bool:
        """At most one prefill pass (a group, or one chunk); True when one ran."""
        self._collect()
        budget = self.prefiller.pacer.budget() if batch.slots else self.max_prefill_tokens
        if self._filling is not None:
            slot, filling = self._filling
            if self._take_cancelled(slot.request.id):
                self._filling = None
                slot.emit(EngineOutput("", 0, "cancelled"))
                return True
            done = self.prefiller.chunk(filling, budget, timed=bool(batch.slots))
            if done is not None:
                self._filling = None
                self._join(batch, sampler, [slot], done)
            return True
        group = self._pick(batch, budget)
        if not group:
            return False
        prompt = group[0].request.prompt_ids
        if len(group) == 1 and len(prompt) > budget:
            self._filling = (group[0], self.prefiller.start(prompt))
            return self._admit(batch, sampler)
        done = self.prefiller.group([s.request.prompt_ids for s in group])
        self._join(batch, sampler, group, done)
        return True

    def _pick(self, batch: Batch[_Slot], budget: int) -> list[_Slot]:
        """Waiting requests (in order) for one pass: the batch's room, the KV token limit,
        and `budget` padded tokens (a first request over it is prefilled in chunks)."""
        tokens = sum(_need(s) for s in batch.slots)
        group: list[_Slot] = []
        width = 0
        for slot in self._waiting:
            if len(batch) + len(group) >= self.max_batch_size:
                break
            if (batch.slots or group) and tokens + _need(slot) > self.max_batch_tokens:
                break
            wider = max(width, len(slot.request.prompt_ids))
            if group and wider * (len(group) + 1) > budget:
                break
            group.append(slot)
            tokens, width = tokens + _need(slot), wider
        del self._waiting[: len(group)]
        return group

    def _join(self, batch: Batch[_Slot], sampler: RowSampler, slots: list[_Slot],
              done: Prefilled) -> None:
        start, vocab = len(batch), done.logits.shape[-1]
        rows = list(range(start, start + len(slots)))
        if any(s.request.params.seed is not None for s in slots):
            picks = []  # row by row: a request's seed sets its own first draw
            for i, slot in enumerate(slots):
                slot.ids = list(slot.request.prompt_ids)
                row = sampler.add(slot.request.params, slot.ids, vocab)
                picks.append(sampler.sample(done.logits[i : i + 1], rows=[row])[0])
            first = torch.stack(picks)
        else:
            for slot in slots:
                slot.ids = list(slot.request.prompt_ids)
                sampler.add(slot.request.params, slot.ids, vocab)
            first = sampler.sample(done.logits, rows=rows)
        batch.add(slots, done.cache, done.mask, first)
        for row, token in zip(rows, first.tolist(), strict=True):
            self._deliver(batch, row, int(token))
        self._finish_rows(batch, sampler)

    @torch.inference_mode()
    def _step(self, batch: Batch[_Slot], sampler: RowSampler) -> None:
        assert batch.mask is not None and batch.pos is not None and batch.next_ids is not None
        t0 = time.perf_counter()
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
        self.prefiller.pacer.step_took(time.perf_counter() - t0)
        self._finish_rows(batch, sampler)

    def _deliver(self, batch: Batch[_Slot], row: int, token: int) -> None:
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

    def _finish_rows(self, batch: Batch[_Slot], sampler: RowSampler) -> None:
        keep = [i for i, s in enumerate(batch.slots) if not s.finished]
        if len(keep) != len(batch):
            batch.keep(keep)
            sampler.keep(keep)


def _need(slot: _Slot) -> int:
    """KV tokens a request may come to hold."""
    return len(slot.request.prompt_ids) + slot.request.params.max_new_tokens
