"""The local engine's concurrency follows the memory it has."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import LlamaConfig

from kullm_core.engine import memory
from kullm_core.engine.memory import plan_slots
from kullm_core.errors import ModelLoadError

SOLAR = LlamaConfig(num_hidden_layers=48, hidden_size=4096, num_attention_heads=32,
                    num_key_value_heads=8)
GIB = 2**30
SLOT = 192 * 1024 * 4096  # one 4,096-token KULLM3 conversation in bf16: 0.75 GiB
CUDA, CPU, BF16 = torch.device("cuda"), torch.device("cpu"), torch.bfloat16


def _free(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    """A GPU with `free` bytes free (this machine has none: `mem_get_info` is the seam)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 141 * GIB))


def test_on_the_cpu_auto_is_16_and_a_number_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_available_ram", lambda: 64 * GIB)
    assert plan_slots(SOLAR, BF16, CPU, 4096) == 16
    assert plan_slots(SOLAR, BF16, CPU, 4096, max_batch_size=4) == 4
    assert plan_slots(SOLAR, BF16, CPU, 4096, max_batch_size=16, max_batch_tokens=8192) == 2


def test_an_h200_after_the_weights_takes_64_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    _free(monkeypatch, 115 * GIB)  # 141 GiB less 21.4 GB of weights and the CUDA context
    assert plan_slots(SOLAR, BF16, CUDA, 4096) == 64
    fits = int((115 * GIB * memory.RESERVE - memory.ACTIVATIONS) // SLOT)
    assert plan_slots(SOLAR, BF16, CUDA, 4096, max_batch_size=512) == fits == 135
    assert plan_slots(SOLAR, BF16, CUDA, 2048, max_batch_size=200) == 200  # half the context


def test_auto_on_a_smaller_gpu_takes_what_fits_quietly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _free(monkeypatch, 20 * GIB)  # an 80 GB card with two models on it, say
    with caplog.at_level(logging.INFO, logger="kullm_core.engine.memory"):
        assert plan_slots(SOLAR, BF16, CUDA, 4096) == 21
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "the GPU (20.0 GiB) holds 21 conversations of 4096 tokens, not the 64 it could" \
        in caplog.text


def test_a_number_the_gpu_cannot_hold_is_cut_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _free(monkeypatch, 8 * GIB)
    with caplog.at_level(logging.WARNING, logger="kullm_core.engine.memory"):
        assert plan_slots(SOLAR, BF16, CUDA, 4096, max_batch_size=16) == 6
    assert "holds 6 conversations of 4096 tokens, not the 16 asked" in caplog.text


def test_on_the_cpu_half_the_free_ram_is_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_available_ram", lambda: 6 * GIB)  # 3 GiB: 4 slots
    assert plan_slots(SOLAR, BF16, CPU, 4096) == 4


def test_this_machine_says_how_much_ram_it_has() -> None:
    from kullm_core.engine.memory import _available_ram

    assert _available_ram() > 0


def test_no_room_for_one_conversation_is_an_error_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _free(monkeypatch, 2 * GIB)
    with pytest.raises(ModelLoadError, match="too little for one 4096-token conversation"):
        plan_slots(SOLAR, BF16, CUDA, 4096)
