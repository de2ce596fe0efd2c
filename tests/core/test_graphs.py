"""Decode passes with fixed shapes (what a CUDA graph replays): buckets, and the eager
fallback where capture is impossible (this machine has no CUDA, so capture fails here)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from kullm_core.engine.graphs import DecodeGraphs
from kullm_core.engine.slots import Piece, SlotKV, planned, use_slot_attention


@pytest.fixture
def kv(tiny_model: Any) -> SlotKV:
    use_slot_attention(tiny_model)
    return SlotKV(tiny_model.config, 20, 1024, torch.device("cpu"), torch.float32)


def test_rows_and_width_round_up_to_buckets_within_the_cache(tiny_model: Any,
                                                             kv: SlotKV) -> None:
    graphs = DecodeGraphs(tiny_model, kv, torch.zeros(20, dtype=torch.long), capture=False)
    assert graphs.bucket(1, 10) == (1, 256)
    assert graphs.bucket(3, 257) == (4, 512)
    assert graphs.bucket(13, 1000) == (16, 1024)
    assert graphs.bucket(17, 5000) == (20, 1024)  # never past the slots or their length


def _prefill(model: Any, kv: SlotKV, prompts: dict[int, list[int]]) -> None:
    pieces = [Piece(slot, 0, len(ids)) for slot, ids in prompts.items()]
    plan = kv.plan([], [], pieces)
    with torch.inference_mode(), planned(plan):
        model(input_ids=torch.tensor([[t for ids in prompts.values() for t in ids]]),
              position_ids=plan.positions.view(1, -1), use_cache=False)
    kv.advance(plan)


def test_without_cuda_capture_fails_once_and_the_pass_runs_eagerly(
    tiny_model: Any, kv: SlotKV, caplog: pytest.LogCaptureFixture
) -> None:
    prompts = {0: [5, 6, 7], 2: [8, 9, 10, 11, 12]}  # slot 1 is a hole
    _prefill(tiny_model, kv, prompts)
    nxt = torch.zeros(20, dtype=torch.long)
    nxt[0], nxt[2] = 40, 41
    graphs = DecodeGraphs(tiny_model, kv, nxt, capture=True)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        logits, rows = graphs.run(3, 6)
        graphs.advance(rows)
        again, _ = graphs.run(3, 7)
    assert rows == 4 and logits.shape[0] == 4
    assert graphs.failed and graphs.captured == 0 and graphs.replays == 0
    assert caplog.text.count("CUDA graph capture failed, decoding eagerly") == 1
    with torch.inference_mode():
        for slot, ids in prompts.items():
            want = tiny_model(input_ids=torch.tensor([[*ids, int(nxt[slot])]])).logits[0, -1]
            torch.testing.assert_close(logits[slot], want)
    assert kv.lengths[:3].tolist() == [4, 1, 6]  # the hole grew too: a dummy row
    assert again.shape[0] == 4
