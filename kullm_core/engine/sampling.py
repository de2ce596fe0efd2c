"""Per-slot logits processing on the device, with the semantics of transformers' processors.

`SlotSampler` keeps each running request in a fixed slot (see engine/local.py): its history
(an id buffer for the n-gram ban, a seen set for the repetition penalty) and its penalty,
temperature and top-p, as device tensors written at `add`. `sample()` never waits on the
device: each decision (skip the penalty, which rows ban n-grams of which size, greedy or drawn,
on which generator) is made on the host from the slots' `SamplingParams` and lengths, with
index tensors built once per batch composition (`rows()`), not per step.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from kullm_core.engine.base import SamplingParams


@dataclass(eq=False)
class SlotRows:
    """The slots behind a batch's logits rows, in order (`SlotSampler.rows`)."""

    slots: list[int]
    index: torch.Tensor  # [n] long on the device
    plan: _Plan | None = field(default=None, repr=False)


@dataclass
class _Plan:
    """The host's decisions for one composition, with the device indices they need."""

    stamps: tuple[int, ...]  # the slots' stamps when planned: a new request makes it stale
    penalty: bool
    ngrams: list[tuple[int, torch.Tensor | None, torch.Tensor, list[int]]]
    """Per n: its rows (None: all), their slots on the device and on the host."""
    sampled: torch.Tensor | None  # rows drawn at random (None: all)
    sampled_slots: torch.Tensor | None  # their slots (None: every row is greedy)
    shared: torch.Tensor | None  # positions among the drawn rows on the shared generator
    seeded: list[tuple[int, int]]  # (position among the drawn rows, slot) on its own generator


class SlotSampler:
    """Per-slot sampling state on the device; rows are slot indices (see engine/local.py)."""

    def __init__(self, device: torch.device, slots: int, vocab: int, max_len: int) -> None:
        self.device, self.slots, self.vocab, self.max_len = device, slots, vocab, max_len
        self.params: list[SamplingParams | None] = [None] * slots
        self.lens = [0] * slots  # history per slot: the host knows how many tokens it added
        self._stamps = [0] * slots
        self._next_stamp = itertools.count(1)
        self._ids = torch.zeros(slots, max_len, dtype=torch.long, device=device)
        self._len = torch.zeros(slots, dtype=torch.long, device=device)  # `lens` on the device
        # Column `vocab` takes prompt ids past the logits, which transformers ignores too.
        self._seen = torch.zeros(slots, vocab + 1, dtype=torch.bool, device=device)
        self._penalty = torch.ones(slots, device=device)
        self._temperature = torch.ones(slots, device=device)
        self._top_p = torch.ones(slots, device=device)
        self._generators: dict[int, torch.Generator] = {}
        self._shared = torch.Generator(device=device)
        self._shared.seed()

    def add(self, slot: int, params: SamplingParams, prompt_ids: list[int]) -> None:
        """Start a request in `slot` (resets whatever the slot held)."""
        if not 0 <= slot < self.slots:
            raise IndexError(f"slot {slot} outside [0, {self.slots})")
        if len(prompt_ids) > self.max_len:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens over max_len {self.max_len}")
        n = len(prompt_ids)
        self._seen[slot].zero_()
        if n:
            ids = upload(self.device, prompt_ids)
            self._ids[slot, :n].copy_(ids)
            self._seen[slot].index_fill_(0, ids.clamp(max=self.vocab), True)
        self._len[slot].fill_(n)
        self._penalty[slot].fill_(params.repetition_penalty)
        # Greedy rows are never drawn; 1.0 keeps their unused scores finite.
        self._temperature[slot].fill_(1.0 if params.greedy else max(params.temperature, 1e-5))
        self._top_p[slot].fill_(params.top_p)
        self.params[slot], self.lens[slot] = params, n
        self._generators.pop(slot, None)
        if params.seed is not None:
            self._generators[slot] = torch.Generator(device=self.device)
            self._generators[slot].manual_seed(params.seed)
        self._stamps[slot] = next(self._next_stamp)

    def release(self, slot: int) -> None:
        """The slot's request left; its state may be dropped."""
        self.params[slot] = None
        self._generators.pop(slot, None)
        self._stamps[slot] = next(self._next_stamp)

    def rows(self, slots: list[int]) -> SlotRows:
        """An index object for `slots` in this order (the engine keeps it while its batch does
        not change, so the device index tensor is built once per composition, not per step)."""
        if len(set(slots)) != len(slots):
            raise ValueError(f"slots repeat: {slots}")
        rows = SlotRows(list(slots), upload(self.device, slots))
        if all(self.params[s] is not None for s in slots):
            rows.plan = self._plan(rows.slots)
        return rows

    def sample(self, logits: torch.Tensor, rows: SlotRows) -> torch.Tensor:
        """Next token for each row of `logits` [n, V] (row i is slot rows.slots[i]), as a [n]
        long tensor on the device; each token is recorded in its slot's history (the penalty's
        seen set and the n-gram history) before returning."""
        full = [s for s in rows.slots if self.lens[s] >= self.max_len]
        if full:
            raise ValueError(f"slots {full} hold max_len {self.max_len} tokens")
        scores, plan = self._scores(logits, rows)
        tokens = self._choose(scores, plan)
        at_len = self._len.index_select(0, rows.index)
        self._ids.view(-1).index_copy_(0, rows.index * self.max_len + at_len, tokens)
        self._seen.view(-1).index_fill_(0, rows.index * (self.vocab + 1) + tokens, True)
        self._len.index_add_(0, rows.index, torch.ones_like(rows.index))
        for s in rows.slots:
            self.lens[s] += 1
        return tokens

    def _scores(self, logits: torch.Tensor, rows: SlotRows) -> tuple[torch.Tensor, _Plan]:
        """The logits after each row's repetition penalty and n-gram ban."""
        if logits.shape != (len(rows.slots), self.vocab):
            raise ValueError(f"logits {tuple(logits.shape)} for {len(rows.slots)} slots")
        plan = rows.plan
        if plan is None or plan.stamps != tuple(self._stamps[s] for s in rows.slots):
            plan = rows.plan = self._plan(rows.slots)  # a request came or left since rows()
        scores = logits.float()
        if plan.penalty:
            seen = self._seen.index_select(0, rows.index)[:, : self.vocab]
            p = self._penalty.index_select(0, rows.index).unsqueeze(1)
            scores = torch.where(seen, torch.where(scores < 0, scores * p, scores / p), scores)
        for n, at, slots, host_slots in plan.ngrams:
            scores = self._ban_ngrams(scores, n, at, slots, host_slots)
        return scores, plan

    def _plan(self, slots: list[int]) -> _Plan:
        active: list[SamplingParams] = []
        for s in slots:
            params = self.params[s]
            if params is None:
                raise ValueError(f"slot {s} holds no request")
            active.append(params)
        by_n: dict[int, list[int]] = {}
        for i, p in enumerate(active):
            if p.no_repeat_ngram_size > 0:
                by_n.setdefault(p.no_repeat_ngram_size, []).append(i)
        ngrams = [(n, self._subset(at, len(slots)), upload(self.device, [slots[i] for i in at]),
                   [slots[i] for i in at]) for n, at in by_n.items()]
        drawn = [i for i, p in enumerate(active) if not p.greedy]
        shared = [j for j, i in enumerate(drawn) if active[i].seed is None]
        return _Plan(
            stamps=tuple(self._stamps[s] for s in slots),
            penalty=any(p.repetition_penalty != 1.0 for p in active),
            ngrams=ngrams,
            sampled=self._subset(drawn, len(slots)),
            sampled_slots=upload(self.device, [slots[i] for i in drawn]) if drawn else None,
            shared=upload(self.device, shared) if shared else None,
            seeded=[(j, slots[i]) for j, i in enumerate(drawn) if active[i].seed is not None],
        )

    def _subset(self, at: list[int], n: int) -> torch.Tensor | None:
        return None if at == list(range(n)) else upload(self.device, at)

    def _ban_ngrams(self, scores: torch.Tensor, n: int, at: torch.Tensor | None,
                    slots: torch.Tensor, host_slots: list[int]) -> torch.Tensor:
        """NoRepeatNGramLogitsProcessor(n) for the rows `at` (all when None), all at once."""
        width = max(self.lens[s] for s in host_slots)
        if width < n:  # no row holds a whole n-gram yet
            return scores
        hist = self._ids[:, :width].index_select(0, slots)
        lens = self._len.index_select(0, slots).unsqueeze(1)
        windows = hist.unfold(1, n, 1)  # [g, width - n + 1, n]
        last = (lens - (n - 1) + torch.arange(n - 1, device=self.device)).clamp(min=0)
        prefix = hist.gather(1, last)  # each row's last n - 1 ids
        starts = torch.arange(windows.shape[1], device=self.device)
        # A window must lie inside its own row's history (rows are padded to the longest).
        match = (windows[..., :-1] == prefix.unsqueeze(1)).all(-1) & (starts + n <= lens)
        vocab = scores.shape[-1]
        banned = torch.zeros(len(host_slots), vocab + 1, dtype=torch.bool, device=self.device)
        banned.scatter_(1, torch.where(match, windows[..., -1].clamp(max=vocab), vocab), True)
        if at is None:
            return scores.masked_fill(banned[:, :vocab], float("-inf"))
        rows = scores.index_select(0, at).masked_fill(banned[:, :vocab], float("-inf"))
        return scores.index_copy(0, at, rows)

    def _choose(self, scores: torch.Tensor, plan: _Plan) -> torch.Tensor:
        if plan.sampled_slots is None:
            return scores.argmax(dim=-1)
        drawn = scores if plan.sampled is None else scores.index_select(0, plan.sampled)
        temperature = self._temperature.index_select(0, plan.sampled_slots).unsqueeze(1)
        top_p = self._top_p.index_select(0, plan.sampled_slots)
        probs = _top_p(drawn / temperature, top_p).softmax(dim=-1)
        tokens = (probs / self._noise(probs, plan)).argmax(dim=-1)
        if plan.sampled is None:
            return tokens
        return scores.argmax(dim=-1).index_copy(0, plan.sampled, tokens)

    def _noise(self, probs: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """Exp(1) noise, so that argmax(probs / noise) is torch.multinomial(probs, 1) drawn
        with the same generator (its own method) minus its check that probs are valid, which
        reads them back to the host."""
        noise = torch.empty_like(probs)
        if not plan.seeded:
            return noise.exponential_(generator=self._shared)
        if plan.shared is not None:
            shared = probs.new_empty((plan.shared.shape[0], probs.shape[1]))
            noise.index_copy_(0, plan.shared, shared.exponential_(generator=self._shared))
        for j, slot in plan.seeded:
            noise[j : j + 1].exponential_(generator=self._generators[slot])
        return noise


def upload(device: torch.device, values: list[int]) -> torch.Tensor:
    """A long tensor on `device`; on CUDA from pinned memory, so that the copy does not make
    the host wait for the kernels already queued."""
    host = torch.tensor(values, dtype=torch.long)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _top_p(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """transformers' TopPLogitsWarper with a per-row `top_p` (keeps at least one token)."""
    sorted_logits, sorted_idx = torch.sort(scores, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - top_p.view(-1, 1))
    remove[:, -1] = False
    mask = remove.scatter(1, sorted_idx, remove)
    return scores.masked_fill(mask, float("-inf"))
