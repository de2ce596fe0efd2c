"""The local engine: one model, many conversations decoded together (step-level batching).

Why not transformers' `ContinuousBatchingManager`: it silently drops `repetition_penalty`
(the model card's anti-repetition advice), ignores stop strings and gives no result for a
cancelled request. This engine gives every running request a slot of a KV cache allocated
once at start and written in place (`engine/slots.py`), and runs one packed pass at a time:
the decoding requests' next tokens plus, within a token budget (`engine/prefill.py`), pieces
of the prompts that wait. Requests that arrive together are prefilled in one pass and each
releases its first token as soon as its pass is done; a long prompt that arrives while others
decode rides in their decode steps a bounded chunk at a time. A finished or cancelled request
frees its slot, and every step applies each request's own repetition penalty, n-gram ban,
temperature, top-p and seed to its row, on the device (`engine/sampling.py`). Decode-only
steps run as CUDA graphs (`engine/graphs.py`), and while the rows stay the same the next step
is queued before the host reads the last one's tokens (`overlap`), so the device never waits
for the host turning tokens into text.

All torch work runs on one thread so the worker's event loop keeps serving Redis.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import torch

from kullm_core.decode import IncrementalDecoder
from kullm_core.engine.base import EngineBase, EngineOutput, GenerationRequest
from kullm_core.engine.graphs import DecodeGraphs
from kullm_core.engine.memory import plan_slots
from kullm_core.engine.prefill import MIN_CHUNK, Pacer
from kullm_core.engine.running import Launched, Outgoing, Running, flush, merge
from kullm_core.engine.sampling import SlotRows, SlotSampler, upload
from kullm_core.engine.slots import Piece, Plan, SlotKV, planned, use_slot_attention

log = logging.getLogger(__name__)


class LocalEngine(EngineBase):
    """`Engine` over a transformers causal LM in this process."""

    name = "local"

    def __init__(
        self, model: Any, tokenizer: Any, *, max_batch_size: int = 0,
        max_batch_tokens: int = 0, max_prefill_tokens: int = 16384,
        prefill_chunk_tokens: int = 1024, arrival_window_s: float = 0.002,
        max_len: int = 4096, decode_graphs: bool | None = None, overlap: bool | None = None,
    ) -> None:
        """`max_len`: tokens one request may hold (prompt + reply: the context window);
        `max_batch_size`: requests decoded at once (0: as many as memory holds, see
        `engine/memory.py`); `max_batch_tokens`: a bound on the KV cache in tokens (slots of
        `max_len`; 0: none);
        `max_prefill_tokens`: prompt tokens of one pass while nothing decodes;
        `prefill_chunk_tokens`: the most a decode step carries (the pacer keeps it to a
        fraction of the step's time); `arrival_window_s`: how long an idle engine waits after
        the first arrival for the ones that came with it (they are prefilled together);
        `decode_graphs`: decode-only passes as CUDA graphs (`engine/graphs.py`; None: where
        there is CUDA; True without CUDA runs the same dense passes eagerly); `overlap`: while
        the rows stay the same, the next decode step is queued on the device before the
        tokens of the last one are read (None: where there is CUDA; see `_pass`)."""
        self.model = model
        self.tokenizer = tokenizer
        self.max_prefill_tokens = max_prefill_tokens
        self.arrival_window_s = arrival_window_s
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.max_len = max_len
        self.kv_slots = plan_slots(model.config, self.dtype, self.device, max_len,
                                   max_batch_size, max_batch_tokens)
        self.slots = self.kv_slots  # the worker takes as many jobs at once
        self.vocab = int(model.config.vocab_size)
        self._incoming: queue.Queue[Running] = queue.Queue()
        self._waiting: list[Running] = []
        self._filling: Running | None = None
        self._decoding: dict[int, Running] = {}
        self._free: list[int] = []
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._outbox: list[Outgoing] = []
        self._kv: SlotKV | None = None
        self._sampler: SlotSampler | None = None
        self._next: torch.Tensor | None = None  # [slots] each decoding slot's next input
        self._rows: SlotRows | None = None  # the decode rows, kept while they do not change
        self.pacer = Pacer(prefill_chunk_tokens)
        self.decode_graphs = self.device.type == "cuda" if decode_graphs is None else decode_graphs
        self.graphs: DecodeGraphs | None = None
        self.overlap = self.device.type == "cuda" if overlap is None else overlap
        self._ahead: Launched | None = None  # a queued decode step, its tokens not read yet
        self._read_at = 0.0  # when the host last had a pass's tokens
        self.steps = 0
        self.ahead = 0
        """Decode steps queued before the previous step's tokens were read."""
        self.passes = 0
        """Passes that carried prompt tokens."""
        self.batch_rows = 0
        """Requests decoding now (the `kullm_batch_slots_used` gauge reads it)."""
        use_slot_attention(model)

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
        run = Running(request, asyncio.get_running_loop(), out,
                       IncrementalDecoder(self.tokenizer), self._outbox)
        self._incoming.put(run)
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
                    item = nxt if isinstance(nxt, BaseException) else merge(item, nxt)
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

    def _reset(self) -> None:
        """Fresh state: every slot free (at start, and after a failed pass)."""
        if self._kv is None:
            self._kv = SlotKV(self.model.config, self.kv_slots, self.max_len, self.device,
                              self.dtype)
            log.info("local engine: %d slots of %d tokens, KV cache %.2f GiB", self.kv_slots,
                     self.max_len, self._kv.bytes / 2**30)
        self._kv.lengths.zero_()
        self._sampler = SlotSampler(self.device, self.kv_slots, self.vocab, self.max_len)
        self._next = torch.zeros(self.kv_slots, dtype=torch.long, device=self.device)
        self._free = list(range(self.kv_slots))
        if self.decode_graphs:  # captured anew: a graph holds the addresses of `_next`
            self.graphs = DecodeGraphs(self.model, self._kv, self._next,
                                       capture=self.device.type == "cuda")
        self._decoding, self._filling, self._waiting, self._rows = {}, None, [], None
        self._ahead = None

    def _run(self) -> None:
        self._reset()
        while not self._stopping.is_set():
            try:
                self._collect()
                if not self._pass():
                    if self._wake.wait(0.5) and self.arrival_window_s > 0:
                        time.sleep(self.arrival_window_s)
                    self._wake.clear()
            except Exception as exc:  # fail the requests, keep the engine alive
                pending = self._pending()
                log.exception("engine pass failed; failing %d requests", len(pending))
                for run in pending:
                    run.emit(exc)
                self._reset()
            flush(self._outbox)
        if self._ahead is not None:  # its tokens are the last its requests get
            try:
                self._finish(self._ahead)
            except Exception:
                log.exception("engine: the last queued step failed at stop")
        for run in self._pending():
            run.emit(EngineOutput("", 0, "cancelled"))
        flush(self._outbox)

    def _pending(self) -> list[Running]:
        filling = [self._filling] if self._filling else []
        return list(self._decoding.values()) + filling + self._waiting

    def _take_cancelled(self, request_id: str) -> bool:
        with self._lock:
            if request_id in self._cancelled:
                self._cancelled.discard(request_id)
                return True
        return False

    def _collect(self) -> None:
        """New arrivals into `_waiting`; cancelled waiting or filling requests end here."""
        while True:
            try:
                run = self._incoming.get_nowait()
            except queue.Empty:
                break
            if not 0 < len(run.prompt) < self.max_len:
                run.emit(ValueError(f"a prompt of {len(run.prompt)} tokens does not fit the "
                                    f"engine's {self.max_len}-token context"))
                continue
            run.max_new = min(run.request.params.max_new_tokens, self.max_len - len(run.prompt))
            self._waiting.append(run)
        for run in [r for r in self._waiting if self._take_cancelled(r.request.id)]:
            self._waiting.remove(run)
            run.emit(EngineOutput("", 0, "cancelled"))
        if self._filling is not None and self._take_cancelled(self._filling.request.id):
            self._filling.emit(EngineOutput("", 0, "cancelled"))
            self._release(self._filling)
            self._filling = None

    def _seat(self, run: Running) -> None:
        assert self._sampler is not None
        run.slot = heapq.heappop(self._free)  # lowest free slot: few holes below the top
        self._sampler.add(run.slot, run.request.params, run.prompt)

    def _release(self, run: Running) -> None:
        assert self._sampler is not None
        self._sampler.release(run.slot)
        heapq.heappush(self._free, run.slot)
        run.slot = -1

    def _pieces(self, budget: int) -> list[tuple[Running, Piece]]:
        """Prompt pieces for this pass, in order: the filling request's next chunk, then whole
        waiting prompts, then the start of one that does not fit whole (it becomes filling)."""
        pieces: list[tuple[Running, Piece]] = []
        left = budget
        if self._filling is not None:
            run = self._filling
            take = min(left, len(run.prompt) - run.prefilled)
            pieces.append((run, Piece(run.slot, run.prefilled, take)))
            left -= take
        while self._waiting and self._free and left > 0:
            run = self._waiting[0]
            whole = len(run.prompt) <= left
            if not whole and (self._filling is not None or (pieces and left < MIN_CHUNK)):
                break
            self._waiting.pop(0)
            self._seat(run)
            pieces.append((run, Piece(run.slot, 0, min(left, len(run.prompt)))))
            left -= pieces[-1][1].length
            if not whole:
                self._filling = run
        return pieces

    @torch.inference_mode()
    def _pass(self) -> bool:
        """One packed pass (decode rows and prompt pieces); False when there was nothing.

        With `overlap`, a decode step whose rows are the last one's is queued on the device
        before the host waits for the last one's tokens, so the device computes while the
        host turns tokens into text. A row that the last tokens end (its end-of-sequence, a
        cancel) computed one token too many in the queued step; it is dropped unread. Steps
        are not queued ahead while prompts wait or a row's length limit is one token away."""
        launched, self._ahead = self._ahead or self._launch(), None
        if launched is None:
            return False
        if self.overlap and self._may_run_ahead(launched):
            self._ahead = self._launch()
            self.ahead += self._ahead is not None
        self._finish(launched)
        return True

    def _may_run_ahead(self, launched: Launched) -> bool:
        return (not launched.prompt_tokens and self._rows is launched.slot_rows
                and not self._waiting and self._filling is None and self._incoming.empty()
                and all(run.generated + 2 <= run.max_new for run in launched.rows))

    def _launch(self) -> Launched | None:
        """Queue the next pass on the device (its tokens are read by `_finish`)."""
        assert self._kv is not None and self._sampler is not None and self._next is not None
        decode = sorted(self._decoding)
        waiting = len(self._waiting) + (self._filling is not None)
        budget = self.pacer.budget(waiting, len(decode)) if decode else self.max_prefill_tokens
        pieces = self._pieces(budget)
        if not decode and not pieces:
            return None
        t0 = time.perf_counter()
        runs = [self._decoding[s] for s in decode]
        if decode and self._rows is None:
            self._rows = self._sampler.rows(decode)
        slot_rows = self._rows
        widths = [r.length + 1 for r in runs]
        done = [(run, p) for run, p in pieces if p.start + p.length == len(run.prompt)]
        if self.graphs is not None and not pieces:
            tokens = self._forward_dense(decode, widths)
        else:
            plan = self._kv.plan(decode, widths, [p for _, p in pieces],
                                 self._rows.index if self._rows is not None else None)
            tokens = self._forward(plan, decode, pieces, done)
            self._kv.advance(plan)
        for run in runs:
            run.length += 1
        for run, p in pieces:
            run.prefilled = run.length = p.start + p.length
        if self._filling is not None and self._filling.prefilled == len(self._filling.prompt):
            self._filling = None
        for run, _ in done:
            self._decoding[run.slot] = run
        if done:
            self._rows = None
        self.steps += bool(decode)
        self.passes += bool(pieces)
        return Launched(runs + [run for run, _ in done], tokens, t0, len(decode),
                        sum(p.length for _, p in pieces), slot_rows)

    def _finish(self, launched: Launched) -> None:
        """Read a pass's tokens (the pass's one device-to-host copy) and hand them out."""
        tokens = launched.read()
        for run, token in zip(launched.rows, tokens, strict=True):
            if not run.finished:  # else it ended in the step before (see `_pass`)
                run.take(token, token in self.eos_ids, self._take_cancelled)
        now = time.perf_counter()
        self.pacer.took(launched.decode, launched.prompt_tokens,
                        now - max(launched.t0, self._read_at))
        self._read_at = now
        self._leave()
        self.batch_rows = len(self._decoding)

    def _forward_dense(self, decode: list[int], widths: list[int]) -> torch.Tensor:
        """A decode-only pass through `graphs` (slots [0, bucket): fixed shapes)."""
        assert self.graphs is not None and self._rows is not None
        logits, rows = self.graphs.run(decode[-1] + 1, max(widths))
        own = logits[: len(decode)] if len(decode) == decode[-1] + 1 else logits.index_select(
            0, self._rows.index)
        tokens = self._sample(own, self._rows)
        self.graphs.advance(rows)
        return tokens

    def _forward(self, plan: Plan, decode: list[int], pieces: list[tuple[Running, Piece]],
                 done: list[tuple[Running, Piece]]) -> torch.Tensor:
        """Run the pass; the next token of every decode row and completed prompt."""
        assert self._sampler is not None and self._next is not None
        parts: list[torch.Tensor] = []
        if decode:
            assert self._rows is not None
            parts.append(self._next[: len(decode)] if plan.scatter is None
                         else self._next.index_select(0, self._rows.index))
        keep: list[int] = list(range(len(decode)))
        end = len(decode)
        for run, p in pieces:
            parts.append(upload(self.device, run.prompt[p.start : p.start + p.length]))
            end += p.length
            if p.start + p.length == len(run.prompt):
                keep.append(end - 1)
        # logits of the decode rows and of each completed prompt's last token (0: of all, so
        # a decode-only pass sends nothing to the device)
        logits_to_keep = upload(self.device, keep) if pieces else 0
        with planned(plan):
            out = self.model(input_ids=torch.cat(parts).view(1, -1),
                             position_ids=plan.positions.view(1, -1), use_cache=False,
                             logits_to_keep=logits_to_keep)
        rows = self._rows if not done else self._sampler.rows(
            decode + [run.slot for run, _ in done])
        assert rows is not None
        return self._sample(out.logits[0], rows)

    def _sample(self, logits: torch.Tensor, rows: SlotRows) -> torch.Tensor:
        """Each row's next token, kept on the device as its slot's next input."""
        assert self._sampler is not None and self._next is not None
        tokens = self._sampler.sample(logits, rows)
        self._next.index_copy_(0, rows.index, tokens)
        return tokens

    def _leave(self) -> None:
        gone = [s for s, run in self._decoding.items() if run.finished]
        for slot in gone:
            self._release(self._decoding.pop(slot))
        if gone:
            self._rows = None
