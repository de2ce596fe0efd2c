"""How many requests the local engine's KV cache holds: what was asked, as far as memory goes."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from kullm_core.engine.base import AUTO_SLOTS_CPU, AUTO_SLOTS_GPU
from kullm_core.engine.slots import kv_bytes_per_token
from kullm_core.errors import ModelLoadError

log = logging.getLogger(__name__)

RESERVE = 0.9
"""Share of the free GPU memory the KV cache may take."""
ACTIVATIONS = 2 * 2**30
"""Left free for a pass's activations (a 16k-token prefill of KULLM3 needs about 1.5 GiB)."""


def plan_slots(config: Any, dtype: torch.dtype, device: torch.device, max_len: int,
               max_batch_size: int = 0, max_batch_tokens: int = 0) -> int:
    """Slots of `max_len` tokens: `max_batch_size` (0: auto, `AUTO_SLOTS_*`), at most
    `max_batch_tokens // max_len` (0: no bound), fewer where the free memory holds fewer
    (on a GPU 90 % of it less `ACTIVATIONS`; on the CPU half the available RAM).

    Raises:
        ModelLoadError: no room for even one full-context request.
    """
    cuda = device.type == "cuda"
    wanted = max_batch_size or (AUTO_SLOTS_GPU if cuda else AUTO_SLOTS_CPU)
    if max_batch_tokens:
        wanted = min(wanted, max(1, max_batch_tokens // max_len))
    per_slot = kv_bytes_per_token(config, dtype) * max_len
    if cuda:
        where, free = "the GPU", torch.cuda.mem_get_info(device)[0]
        room = free * RESERVE - ACTIVATIONS
    else:
        where, free = "RAM", _available_ram()
        room = free / 2 if free else per_slot * wanted
    fits = int(room // per_slot)
    if fits < 1:
        raise ModelLoadError(
            f"{where} has {free / 2**30:.1f} GiB free after loading the model, too little for "
            f"one {max_len}-token conversation's KV cache ({per_slot / 2**30:.2f} GiB) and "
            "the activations: lower generation.context_window, or use a larger machine")
    if fits < wanted:
        log.log(logging.WARNING if max_batch_size else logging.INFO,
                "local engine: the free memory of %s (%.1f GiB) holds %d conversations of %d "
                "tokens, not the %d %s", where, free / 2**30, fits, max_len, wanted,
                "asked (batching.max_batch_size)" if max_batch_size else "it could take")
        return fits
    return wanted


def _available_ram() -> int:
    """Bytes of RAM available now (0 where the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return 0
