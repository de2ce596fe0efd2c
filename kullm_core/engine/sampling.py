"""Per-row logits processing for a batch, with the semantics of transformers' processors.

Each running request keeps its own repetition penalty, n-gram ban, temperature and top-p;
the common case (all greedy, one penalty tensor) is fully vectorized.
"""

from __future__ import annotations

import torch
from transformers import NoRepeatNGramLogitsProcessor

from kullm_core.engine.base import SamplingParams


class RowSampler:
    """Holds per-row sampling state; rows follow the batch (add, keep)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.params: list[SamplingParams] = []
        self.ids: list[list[int]] = []
        self.seen: torch.Tensor | None = None  # [B, V] token already in prompt or output
        self.generator = torch.Generator(device=device)
        self.generator.seed()

    def add(self, params: SamplingParams, prompt_ids: list[int], vocab: int) -> int:
        row = torch.zeros(1, vocab, dtype=torch.bool, device=self.device)
        row[0, torch.tensor(prompt_ids, device=self.device)] = True
        self.seen = row if self.seen is None or not self.params else torch.cat([self.seen, row])
        self.params.append(params)
        self.ids.append(list(prompt_ids))
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        return len(self.params) - 1

    def observe(self, row: int, token: int) -> None:
        assert self.seen is not None
        self.seen[row, token] = True
        self.ids[row].append(token)

    def keep(self, rows: list[int]) -> None:
        self.params = [self.params[i] for i in rows]
        self.ids = [self.ids[i] for i in rows]
        if self.seen is not None and rows:
            self.seen = self.seen.index_select(0, torch.tensor(rows, device=self.device))
        elif not rows:
            self.seen = None

    def sample(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Next token for each of `rows` (logits are in the same order). Returns [len(rows)]."""
        assert self.seen is not None
        scores = logits.float()
        params = [self.params[r] for r in rows]
        penalty = torch.tensor([p.repetition_penalty for p in params], device=scores.device)
        if bool((penalty != 1.0).any()):
            seen = self.seen[rows] if len(rows) != len(self.params) else self.seen
            pen = penalty.view(-1, 1)
            penalized = torch.where(scores < 0, scores * pen, scores / pen)
            scores = torch.where(seen, penalized, scores)
        for i, (r, p) in enumerate(zip(rows, params, strict=True)):
            if p.no_repeat_ngram_size > 0:
                ids = torch.tensor([self.ids[r]], device=scores.device)
                proc = NoRepeatNGramLogitsProcessor(p.no_repeat_ngram_size)
                scores[i : i + 1] = proc(ids, scores[i : i + 1])
        greedy = torch.tensor([p.greedy for p in params], device=scores.device)
        choice = scores.argmax(dim=-1)
        if bool(greedy.all()):
            return choice
        temp = torch.tensor([max(p.temperature, 1e-5) for p in params], device=scores.device)
        top_p = torch.tensor([p.top_p for p in params], device=scores.device)
        probs = _top_p(scores / temp.view(-1, 1), top_p).softmax(dim=-1)
        sampled = torch.multinomial(probs, 1, generator=self.generator).view(-1)
        return torch.where(greedy, choice, sampled)


def _top_p(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """transformers' TopPLogitsWarper with a per-row `top_p` (keeps at least one token)."""
    sorted_logits, sorted_idx = torch.sort(scores, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - top_p.view(-1, 1))
    remove[:, -1] = False
    mask = remove.scatter(1, sorted_idx, remove)
    return scores.masked_fill(mask, float("-inf"))
