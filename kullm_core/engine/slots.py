"""Preallocated per-slot KV and the packed pass of the local engine.

Every running request owns one slot of a KV cache allocated once at start
(`[slots, kv_heads, max_len, head_dim]` per layer) and written in place: nothing is copied per
step, on join or on leave, and a finished request's slot is simply reused.

One forward pass takes a *packed* sequence (batch 1): the decoding requests' next tokens first,
then prompt pieces (whole prompts, or one chunk of a long one). The linear layers, which read
every weight, run once over all of them; attention (`slot_attention`, registered with
transformers' `AttentionInterface`) writes each token's K/V into its slot at its position and
lets each piece attend to its own slot only. So a joining prompt's chunk rides in a decode
step instead of costing a pass of its own, and rows of different lengths need no padding in
the linear layers. Why not transformers' paged continuous-batching cache: its classes are
internal and changed between the versions we run on (5.17 on the GPU image, 5.23 here).

Outside a planned pass (e.g. `model.generate` on the same model) the attention is plain SDPA.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION = "kullm_slots"


@dataclass(frozen=True)
class Piece:
    """Prompt tokens [start, start + length) of the request in `slot`."""

    slot: int
    start: int
    length: int


@dataclass
class Plan:
    """One packed pass: `decode` slots (one token each, ascending), then `pieces`.

    Built by `SlotKV.plan`; the attention of every layer reads it."""

    kv: SlotKV
    decode: list[int]
    pieces: list[Piece]
    positions: torch.Tensor  # [N] position of every packed token (also its KV column)
    token_slots: torch.Tensor  # [N] slot of every packed token
    width: int  # decode attention length: longest decoding row, its new token included
    rows: int  # decode attention rows: slots [0, rows) (holes are computed, not copied)
    scatter: torch.Tensor | None  # decode slots as an index when they are not 0..rows-1
    decode_mask: torch.Tensor | None  # [rows, 1, 1, width] True = attend
    piece_masks: list[torch.Tensor | None] = field(default_factory=list)


_PLAN: ContextVar[Plan | None] = ContextVar("kullm_slot_plan", default=None)


def current_plan() -> Plan | None:
    """The pass running on this thread, if any (tests read it to see what a pass held)."""
    return _PLAN.get()


@contextmanager
def planned(plan: Plan) -> Iterator[Plan]:
    token = _PLAN.set(plan)
    try:
        yield plan
    finally:
        _PLAN.reset(token)


def kv_shape(config: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a transformers decoder config."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, getattr(config, "num_key_value_heads", heads), head_dim


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    layers, kv_heads, head_dim = kv_shape(config)
    return 2 * layers * kv_heads * head_dim * dtype.itemsize


class SlotKV:
    """The KV cache: `slots` rows of `max_len` tokens per layer, allocated once."""

    def __init__(self, config: Any, slots: int, max_len: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        layers, kv_heads, head_dim = kv_shape(config)
        self.slots, self.max_len, self.device = slots, max_len, device
        shape = (slots, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        """Tokens in each slot's KV (on the device: the decode step reads it without a copy)."""
        self._arange = torch.arange(max_len, device=device)

    @property
    def bytes(self) -> int:
        return 2 * sum(k.numel() * k.element_size() for k in self.keys)

    def plan(self, decode: list[int], widths: list[int], pieces: list[Piece],
             index: torch.Tensor | None = None) -> Plan:
        """A pass over `decode` slots (ascending; `widths[i]` = tokens in slot decode[i] once
        this step's token is written; `index`: them as a device tensor, when the caller has
        one) and `pieces` of prompts. A decode-only pass copies nothing from the host."""
        dev = self.device
        parts_pos: list[torch.Tensor] = []
        parts_slot: list[torch.Tensor] = []
        rows, width, scatter, mask = 0, 0, None, None
        if decode:
            rows, width = decode[-1] + 1, max(widths)
            if len(decode) == rows:
                index = None
            elif index is None:
                index = torch.tensor(decode, device=dev)
            scatter = index
            pos = self.lengths[:rows] if index is None else self.lengths.index_select(0, index)
            parts_pos.append(pos)
            parts_slot.append(torch.arange(rows, device=dev) if index is None else index)
            mask = self._decode_mask(rows, width)
        piece_masks: list[torch.Tensor | None] = []
        for p in pieces:
            parts_pos.append(torch.arange(p.start, p.start + p.length, device=dev))
            parts_slot.append(torch.full((p.length,), p.slot, device=dev))
            piece_masks.append(_causal(p, dev) if p.start else None)
        return Plan(self, decode, pieces, torch.cat(parts_pos), torch.cat(parts_slot), width,
                    rows, scatter, mask, piece_masks)

    def plan_dense(self, rows: int, width: int, positions: torch.Tensor,
                   slots: torch.Tensor) -> Plan:
        """A decode pass over every slot in [0, rows) (free ones as dummy rows) with a fixed
        attention `width`: the fixed shapes a CUDA graph replays (`engine/graphs.py`)."""
        return Plan(self, list(range(rows)), [], positions, slots, width, rows, None,
                    self._decode_mask(rows, width))

    def _decode_mask(self, rows: int, width: int) -> torch.Tensor:
        """[rows, 1, 1, width]: slot r's row sees its first lengths[r] + 1 columns (a free
        slot's row sees at least column 0: finite, and unused)."""
        mask = self._arange[:width].view(1, -1) <= self.lengths[:rows].view(-1, 1)
        return mask.view(rows, 1, 1, width)

    def advance(self, plan: Plan) -> None:
        """After the pass: every slot's KV length grows by the tokens it wrote."""
        if plan.decode:
            if plan.scatter is None:  # the decode slots are exactly [0, rows)
                self.lengths[: plan.rows] += 1
            else:
                self.lengths.index_add_(0, plan.scatter, torch.ones_like(plan.scatter))
        for p in plan.pieces:
            self.lengths[p.slot] = p.start + p.length


def _causal(p: Piece, device: torch.device) -> torch.Tensor:
    """[L, start+L]: query i sees columns <= start + i."""
    cols = torch.arange(p.start + p.length, device=device).view(1, -1)
    rows = torch.arange(p.start, p.start + p.length, device=device).view(-1, 1)
    return cols <= rows


def slot_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, scaling: float | None = None,
                   dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function over the planned pass (query [1, H, N, D])."""
    plan = _PLAN.get()
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)
    kv, layer = plan.kv, module.layer_idx
    keys, values = kv.keys[layer], kv.values[layer]
    # every packed token's K/V into its slot, in place: [N, Hkv, D] at (slot, :, position)
    keys[plan.token_slots, :, plan.positions] = key[0].transpose(0, 1)
    values[plan.token_slots, :, plan.positions] = value[0].transpose(0, 1)
    heads, kv_heads, dim = query.shape[1], keys.shape[1], query.shape[-1]
    group = heads // kv_heads
    out = query.new_empty(query.shape[2], heads, dim)
    n = len(plan.decode)
    if n:
        # the `group` query heads sharing a KV head go in the query-length axis (one token
        # each), so grouped-query attention needs no copy of the cache
        q = query[0, :, :n].transpose(0, 1).reshape(n, kv_heads, group, dim)
        if plan.scatter is not None:
            q = q.new_zeros(plan.rows, kv_heads, group, dim).index_copy_(0, plan.scatter, q)
        o = F.scaled_dot_product_attention(
            q, keys[: plan.rows, :, : plan.width], values[: plan.rows, :, : plan.width],
            attn_mask=plan.decode_mask, scale=scaling)
        if plan.scatter is not None:
            o = o.index_select(0, plan.scatter)
        out[:n] = o.reshape(n, heads, dim)
    t = n
    for p, mask in zip(plan.pieces, plan.piece_masks, strict=True):
        q = query[:, :, t : t + p.length]
        if mask is None:  # a whole prompt, or its first chunk: plain causal attention
            o = F.scaled_dot_product_attention(q, key[:, :, t : t + p.length],
                                               value[:, :, t : t + p.length], is_causal=True,
                                               scale=scaling, enable_gqa=True)[0]
        else:  # a later chunk: its rows see the slot's earlier tokens and their own past
            o = _masked(q, keys[p.slot, :, : p.start + p.length],
                        values[p.slot, :, : p.start + p.length], mask, scaling)
        out[t : t + p.length] = o.transpose(0, 1)
        t += p.length
    return out.unsqueeze(0), None


def _masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
            scaling: float | None, folded: bool | None = None) -> torch.Tensor:
    """[H, L, D] attention of q [1, H, L, D] to one slot's k, v [Hkv, S, D] under mask [L, S].
    `folded` (None: on CUDA): the query heads sharing a KV head go in the length axis (the
    memory-efficient kernel takes a mask but not grouped heads); on the CPU SDPA's own
    grouped-query path is faster."""
    heads, length, dim = q.shape[1:]
    if not (q.device.type == "cuda" if folded is None else folded):
        return F.scaled_dot_product_attention(q, k.unsqueeze(0), v.unsqueeze(0),
                                              attn_mask=mask, scale=scaling,
                                              enable_gqa=True)[0]
    group = heads // k.shape[0]
    # 4-D (batch 1): the fused kernels take only 4-D inputs (3-D ones run the math fallback)
    o = F.scaled_dot_product_attention(q.reshape(1, k.shape[0], group * length, dim),
                                       k.unsqueeze(0), v.unsqueeze(0),
                                       attn_mask=mask.repeat(group, 1), scale=scaling)
    return o.view(heads, length, dim)


AttentionInterface.register(ATTENTION, slot_attention)


def use_slot_attention(model: Any) -> None:
    """Route the model's attention through `slot_attention` (plain SDPA outside a plan)."""
    model.config._attn_implementation = ATTENTION


@contextmanager
def plain_attention(model: Any) -> Iterator[None]:
    """transformers' own SDPA for a while (e.g. `model.generate` as a benchmark's anchor on
    the engine's model), then whatever the model had."""
    before, model.config._attn_implementation = model.config._attn_implementation, "sdpa"
    try:
        yield
    finally:
        model.config._attn_implementation = before
