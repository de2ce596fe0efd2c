"""How many requests the local engine's KV cache holds: what was asked, as far as memory goes."""

from __future__ import annotations

import logging
from typing import Any

import torch

from kullm_core.engine.slots import kv_bytes_per_token
from kullm_core.errors import ModelLoadError

log = logging.getLogger(__name__)

RESERVE = 0.9
"""Share of the free GPU memory the KV cache may take."""
ACTIVATIONS = 2 * 2**30
"""Left free for a pass's activations (a 16k-token prefill of KULLM3 needs about 1.5 GiB)."""


def plan_slots(config: Any, dtype: torch.dtype, device: torch.device, max_len: int,
               wanted: int) -> int:
    """Slots of `max_len` tokens: `wanted`, fewer on a GPU whose free memory holds fewer.

    Raises:
        ModelLoadError: the GPU has no room for even one full-context request.
    """
    per_slot = kv_bytes_per_token(config, dtype) * max_len
    if device.type != "cuda":
        return wanted
    free, _ = torch.cuda.mem_get_info(device)
    fits = int((free * RESERVE - ACTIVATIONS) // per_slot)
    if fits < 1:
        raise ModelLoadError(
            f"the GPU has {free / 2**30:.1f} GiB free after loading the model, less than one "
            f"{max_len}-token conversation's KV cache ({per_slot / 2**30:.2f} GiB) plus room "
            "for activations: lower generation.context_window, or use a larger GPU")
    if fits < wanted:
        log.warning("local engine: the GPU's free memory (%.1f GiB) holds %d conversations "
                    "of %d tokens, not the %d asked (batching.max_batch_size)",
                    free / 2**30, fits, max_len, wanted)
        return fits
    return wanted
