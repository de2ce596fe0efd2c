"""The running requests' shared left-padded KV cache (the approach of TGI's `CausalLMBatch`).

Rows join after their prefill (several at once when they were prefilled together) and leave
when they finish; columns that are padding for every row are trimmed on leave.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import torch
from transformers import DynamicCache

S = TypeVar("S")


class Batch(Generic[S]):
    """Running requests (`slots`, one per row) and their shared left-padded KV cache."""

    def __init__(self) -> None:
        self.slots: list[S] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [B, T] 1 = real token
        self.pos: torch.Tensor | None = None  # [B] position of the next token
        self.next_ids: torch.Tensor | None = None  # [B] token to feed next

    def __len__(self) -> int:
        return len(self.slots)

    def add(self, slots: list[S], cache: DynamicCache, mask: torch.Tensor,
            first: torch.Tensor) -> None:
        """Join rows prefilled together: `mask` [n, L] left-padded, `first` [n] their tokens."""
        pos = mask.sum(dim=1)
        first = first.view(-1)
        if self.cache is None or not self.slots:
            self.slots, self.cache, self.mask = list(slots), cache, mask
            self.pos, self.next_ids = pos, first
            return
        assert self.mask is not None and self.pos is not None and self.next_ids is not None
        cur, length = self.mask.shape[1], mask.shape[1]
        width = max(cur, length)
        olds: list[Any] = list(self.cache.layers)
        news: list[Any] = list(cache.layers)
        for old, new in zip(olds, news, strict=True):
            old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)])
            old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)])
        pad = torch.nn.functional.pad
        self.mask = torch.cat([pad(self.mask, (width - cur, 0)), pad(mask, (width - length, 0))])
        self.pos = torch.cat([self.pos, pos])
        self.next_ids = torch.cat([self.next_ids, first])
        self.slots.extend(slots)

    def keep(self, rows: list[int]) -> None:
        """Drop every row not in `rows`, then trim columns that are padding for all."""
        if not rows:
            self.slots, self.cache = [], None
            self.mask = self.pos = self.next_ids = None
            return
        assert self.cache is not None and self.mask is not None
        assert self.pos is not None and self.next_ids is not None
        idx = torch.tensor(rows, device=self.mask.device)
        self.slots = [self.slots[i] for i in rows]
        mask = self.mask.index_select(0, idx)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        self.mask = mask[:, start:]
        self.pos = self.pos.index_select(0, idx)
        self.next_ids = self.next_ids.index_select(0, idx)
        layer: Any
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, idx)[:, :, start:]
            layer.values = layer.values.index_select(0, idx)[:, :, start:]


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    extra = width - t.shape[-2]
    return torch.nn.functional.pad(t, (0, 0, extra, 0)) if extra > 0 else t
