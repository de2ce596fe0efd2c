"""SlotSampler against transformers' own processors, row by row, on random logits."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from transformers import (
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from kullm_core.engine.base import SamplingParams
from kullm_core.engine.sampling import SlotSampler
from tests.core.host_sync import no_host_sync

V = 48  # small, so that histories repeat and the penalty and bans hit the likely tokens
CPU = torch.device("cpu")


class Reference:
    """What transformers' processors give each row on its own, with its full history."""

    def __init__(self, shared_seed: int) -> None:
        self.params: dict[int, SamplingParams] = {}
        self.history: dict[int, list[int]] = {}
        self.generators: dict[int, torch.Generator] = {}
        self.shared = torch.Generator().manual_seed(shared_seed)

    def add(self, slot: int, params: SamplingParams, prompt: list[int]) -> None:
        self.params[slot], self.history[slot] = params, list(prompt)
        if params.seed is not None:
            self.generators[slot] = torch.Generator().manual_seed(params.seed)

    def scores(self, logits: torch.Tensor, slot: int) -> torch.Tensor:
        p, ids = self.params[slot], torch.tensor([self.history[slot]], dtype=torch.long)
        scores = logits.float().unsqueeze(0)
        if p.repetition_penalty != 1.0:
            scores = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, scores)
        if p.no_repeat_ngram_size > 0:
            scores = NoRepeatNGramLogitsProcessor(p.no_repeat_ngram_size)(ids, scores)
        return scores

    def probs(self, scores: torch.Tensor, slot: int) -> torch.Tensor:
        p, ids = self.params[slot], torch.tensor([self.history[slot]], dtype=torch.long)
        scores = TemperatureLogitsWarper(p.temperature)(ids, scores)
        return TopPLogitsWarper(p.top_p)(ids, scores).softmax(dim=-1)

    def sample(self, logits: torch.Tensor, slots: list[int]) -> list[int]:
        tokens: dict[int, int] = {}
        shared: list[tuple[int, torch.Tensor]] = []
        for i, slot in enumerate(slots):
            scores = self.scores(logits[i], slot)
            if self.params[slot].greedy:
                tokens[i] = int(scores.argmax())
            elif self.params[slot].seed is not None:
                probs = self.probs(scores, slot)
                tokens[i] = int(torch.multinomial(probs, 1, generator=self.generators[slot]))
            else:
                shared.append((i, self.probs(scores, slot)))
        if shared:  # unseeded rows: one draw together, as generate() does for a batch
            drawn = torch.multinomial(torch.cat([p for _, p in shared]), 1, generator=self.shared)
            tokens.update({i: int(t) for (i, _), t in zip(shared, drawn.view(-1), strict=True)})
        out = [tokens[i] for i in range(len(slots))]
        for slot, token in zip(slots, out, strict=True):
            self.history[slot].append(token)
        return out


def both(slots: int = 8, max_len: int = 64, shared_seed: int = 11) -> tuple[SlotSampler, Reference]:
    sampler = SlotSampler(CPU, slots, V, max_len)
    sampler._shared.manual_seed(shared_seed)  # the only way to replay the unseeded rows' draws
    return sampler, Reference(shared_seed)


def add(sampler: SlotSampler, ref: Reference, slot: int, params: SamplingParams,
        prompt: list[int]) -> None:
    sampler.add(slot, params, prompt)
    ref.add(slot, params, prompt)


def prompt(rng: random.Random, n: int, vocab: int = 12) -> list[int]:
    return [rng.randrange(vocab) for _ in range(n)]


MIXED = {
    5: SamplingParams(temperature=0.0, repetition_penalty=1.3),
    0: SamplingParams(temperature=0.0, no_repeat_ngram_size=2),
    3: SamplingParams(temperature=0.8, top_p=0.9, repetition_penalty=0.85, no_repeat_ngram_size=3),
    6: SamplingParams(temperature=1.2, top_p=0.75, no_repeat_ngram_size=3, seed=7),
    1: SamplingParams(temperature=0.6, top_p=1.0, no_repeat_ngram_size=2, seed=8),
    7: SamplingParams(temperature=1.0, top_p=0.5, repetition_penalty=1.1),
}


def test_mixed_rows_match_transformers_score_for_score_and_token_for_token() -> None:
    """Slots out of order with holes (2 and 4 unused), every feature in one call, the history
    growing by each sampled token over many steps."""
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    sampler, ref = both()
    for slot, params in MIXED.items():
        # Ids past the logits' width (a larger embedding) are ignored by both.
        add(sampler, ref, slot, params, [*prompt(rng, rng.randrange(2, 9)), V + 3])
    slots = list(MIXED)
    rows = sampler.rows(slots)
    for _ in range(40):
        logits = torch.randn(len(slots), V, generator=gen) * 3
        scores, _ = sampler._scores(logits, rows)
        for i, slot in enumerate(slots):
            assert torch.equal(scores[i : i + 1], ref.scores(logits[i], slot)), slot
        assert sampler.sample(logits, rows).tolist() == ref.sample(logits, slots)
    assert all(sampler.lens[s] == len(ref.history[s]) for s in slots)


def test_bans_and_penalties_bite_on_the_tokens_the_model_wants() -> None:
    """Constant logits: a greedy n-gram-1 row never repeats itself, a greedy n-gram-2 row
    never repeats a pair, and a strong penalty walks down the preferences."""
    sampler = SlotSampler(CPU, 3, V, 64)
    sampler.add(0, SamplingParams(no_repeat_ngram_size=1), [1, 2])
    sampler.add(1, SamplingParams(no_repeat_ngram_size=2), [4])
    sampler.add(2, SamplingParams(repetition_penalty=100.0), [])
    rows = sampler.rows([0, 1, 2])
    logits = torch.linspace(10, 1, V).expand(3, V).contiguous()
    out = [sampler.sample(logits, rows).tolist() for _ in range(20)]
    first = [t[0] for t in out]
    assert len(set(first)) == 20 and not {1, 2} & set(first)
    second = [4, *[t[1] for t in out]]
    pairs = list(itertools.pairwise(second))
    assert len(set(pairs)) == len(pairs)
    assert [t[2] for t in out] == list(range(20))


def test_a_reused_slot_keeps_nothing_of_its_previous_request() -> None:
    rng, gen = random.Random(1), torch.Generator().manual_seed(1)
    sampler, ref = both()
    old = SamplingParams(no_repeat_ngram_size=2, repetition_penalty=1.5)
    add(sampler, ref, 2, old, prompt(rng, 30, vocab=6))
    add(sampler, ref, 4, SamplingParams(temperature=0.9, seed=3), prompt(rng, 5))
    stale = sampler.rows([2, 4])
    for _ in range(10):
        logits = torch.randn(2, V, generator=gen)
        assert sampler.sample(logits, stale).tolist() == ref.sample(logits, [2, 4])
    sampler.release(2)
    # A shorter prompt: the old history past it must not count, nor its seen tokens.
    new = SamplingParams(temperature=0.7, top_p=0.9, repetition_penalty=1.4,
                         no_repeat_ngram_size=3, seed=5)
    add(sampler, ref, 2, new, prompt(rng, 3, vocab=6))
    for rows in (stale, sampler.rows([4, 2])):  # a kept SlotRows follows the new request too
        slots = rows.slots
        for _ in range(15):
            logits = torch.randn(2, V, generator=gen) * 2
            assert sampler.sample(logits, rows).tolist() == ref.sample(logits, slots)


def test_a_released_slot_cannot_be_sampled() -> None:
    sampler = SlotSampler(CPU, 2, V, 8)
    sampler.add(0, SamplingParams(), [1])
    rows = sampler.rows([0])
    sampler.release(0)
    with pytest.raises(ValueError, match="holds no request"):
        sampler.sample(torch.zeros(1, V), rows)


def test_a_full_slot_is_refused_before_anything_changes() -> None:
    sampler = SlotSampler(CPU, 2, V, 4)
    sampler.add(1, SamplingParams(), [1, 2, 3])
    rows = sampler.rows([1])
    sampler.sample(torch.zeros(1, V), rows)
    with pytest.raises(ValueError, match="max_len"):
        sampler.sample(torch.zeros(1, V), rows)
    assert sampler.lens[1] == 4
    with pytest.raises(ValueError, match="max_len"):
        sampler.add(0, SamplingParams(), [0] * 5)


def seeded_run(batch: dict[int, SamplingParams], slot: int, steps: int) -> list[int]:
    """The tokens of `slot` when sampled among `batch` (its logits the same in every run)."""
    sampler = SlotSampler(CPU, 8, V, 64)
    for s, params in batch.items():
        sampler.add(s, params, [1, 2, 3])
    rows = sampler.rows(list(batch))
    mine, others = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        logits = torch.randn(len(batch), V, generator=others)
        logits[rows.slots.index(slot)] = torch.randn(V, generator=mine)
        out.append(int(sampler.sample(logits, rows)[rows.slots.index(slot)]))
    return out


def test_a_seeded_request_replies_the_same_alone_or_batched() -> None:
    seeded = SamplingParams(temperature=1.0, top_p=0.9, repetition_penalty=1.2, seed=42)
    alone = seeded_run({3: seeded}, 3, 30)
    crowd = {0: SamplingParams(temperature=1.0), 6: seeded, 2: SamplingParams(),
             5: SamplingParams(temperature=0.5, seed=1), 1: SamplingParams(temperature=2.0)}
    assert seeded_run(crowd, 6, 30) == alone
    assert len(set(alone)) > 5  # it did sample


def test_temperature_and_top_p_draw_from_the_nucleus_in_proportion() -> None:
    logits = torch.log(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05] + [1e-4] * (V - 5)))
    slots, steps = 8, 400
    sampler = SlotSampler(CPU, slots, V, steps + 1)
    hot = SamplingParams(temperature=1.0, top_p=0.8)  # keeps 0.4, 0.3, 0.15
    for s in range(slots):
        sampler.add(s, hot, [0])
    rows = sampler.rows(list(range(slots)))
    counts = torch.zeros(V)
    for _ in range(steps):
        counts += torch.bincount(sampler.sample(logits.expand(slots, V), rows), minlength=V)
    freq = counts / counts.sum()
    assert counts[3:].sum() == 0
    assert torch.allclose(freq[:3], torch.tensor([0.4, 0.3, 0.15]) / 0.85, atol=0.03)
    cold = SlotSampler(CPU, 1, V, 200)
    cold.add(0, SamplingParams(temperature=0.01, top_p=1.0), [0])  # gaps x100
    one = cold.rows([0])
    assert {int(cold.sample(logits.unsqueeze(0), one)[0]) for _ in range(100)} == {0}


def test_sample_never_reads_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    rng, gen = random.Random(2), torch.Generator().manual_seed(2)
    sampler, ref = both()
    for slot, params in MIXED.items():
        add(sampler, ref, slot, params, prompt(rng, 6))
    rows = sampler.rows(list(MIXED))
    logits = [torch.randn(len(MIXED), V, generator=gen) for _ in range(5)]
    with no_host_sync(monkeypatch):
        tokens = [sampler.sample(x, rows) for x in logits]
    assert [t.tolist() for t in tokens] == [ref.sample(x, rows.slots) for x in logits]


def test_greedy_without_penalty_skips_the_penalty_and_the_draw(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = SlotSampler(CPU, 4, V, 16)
    for s in (3, 1):
        sampler.add(s, SamplingParams(), [1, 2])
    rows = sampler.rows([3, 1])
    logits = torch.randn(2, V)
    with no_host_sync(monkeypatch) as mode:
        tokens = sampler.sample(logits, rows)
    assert torch.equal(tokens, logits.argmax(dim=-1))
    assert not {"where", "exponential_", "sort", "unfold"} & {op.split(".")[1] for op in mode.ops}
