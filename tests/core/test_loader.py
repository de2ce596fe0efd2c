"""Finding and loading the model: a GPU too small for the weights is said at start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kullm_core.engine.loader import check_fits, check_placement, weight_bytes
from kullm_core.errors import ModelLoadError

GIB = 2**30


def test_weights_are_counted_without_loading_them(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    n = sum(p.numel() for p in real.parameters())
    assert weight_bytes(str(tiny_model_dir), torch.bfloat16, False) == 2 * n
    assert weight_bytes(str(tiny_model_dir), torch.float32, False) == 4 * n


def test_kullm3_in_bf16_does_not_fit_a_16_gib_card_and_says_what_to_do() -> None:
    kullm3_bf16 = 10_731_524_096 * 2  # SOLAR-10.7B's parameters, 2 bytes each
    with pytest.raises(ModelLoadError) as err:
        check_fits(kullm3_bf16, 16 * GIB, "bfloat16")
    text = str(err.value)
    assert "20.0 GiB in bfloat16" in text and "16.0 GiB" in text
    assert "model.allow_offload=true" in text and "openai engine" in text
    check_fits(kullm3_bf16, 80 * GIB, "bfloat16")  # an 80 GB card is fine


def test_layers_placed_on_the_cpu_are_refused_unless_offload_is_allowed() -> None:
    check_placement({"model.layers.0": 0, "lm_head": 0})
    with pytest.raises(ModelLoadError, match="placed some layers on cpu"):
        check_placement({"model.layers.0": 0, "model.layers.47": "cpu"})
