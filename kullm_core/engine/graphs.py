"""CUDA graphs for the local engine's decode-only passes.

An eager decode step of a 48-layer Llama launches about 2,700 kernels from Python; at small
batches on a GPU the launches cost more than the kernels. A captured CUDA graph replays them
with one launch. A graph needs fixed shapes, so a graphed pass runs *dense*: slots [0, rows)
with `rows` rounded up to a bucket (free slots are computed as dummy rows, as the eager pass
already does for holes) and the attention width rounded up to `WIDTH_STEP` tokens. Each
(rows, width) bucket is captured the first time it is needed and replayed after; passes that
carry prompt pieces stay eager. Where capture fails the engine logs why once and stays eager.

Without CUDA the same dense passes run eagerly (`capture=False`): that is how the bucketing
is tested on machines without a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from kullm_core.engine.slots import SlotKV, planned

log = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
WIDTH_STEP = 256


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    logits: torch.Tensor  # [rows, vocab], written by every replay


class DecodeGraphs:
    """Dense decode passes over slots [0, rows), captured per bucket when `capture`."""

    def __init__(self, model: Any, kv: SlotKV, next_ids: torch.Tensor, capture: bool) -> None:
        """`next_ids` [slots]: each slot's next input token, the graphs' static input (dummy
        rows read whatever their slot holds)."""
        self.model, self.kv, self.ids, self.capture = model, kv, next_ids, capture
        self._slots = torch.arange(kv.slots, device=kv.device)
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool: Any = None
        self.failed = ""
        """Why capture failed (the engine then runs eager); empty while it works."""
        self.replays = 0

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def bucket(self, rows: int, width: int) -> tuple[int, int]:
        b = next((r for r in ROW_BUCKETS if r >= rows), rows)
        w = -(-width // WIDTH_STEP) * WIDTH_STEP
        return min(b, self.kv.slots), min(w, self.kv.max_len)

    def run(self, rows: int, width: int) -> tuple[torch.Tensor, int]:
        """(logits [b, vocab] of slots [0, b), b): b is the bucket of `rows` (decode slots lie
        below it); the caller then grows `kv.lengths[:b]` by one (`advance`)."""
        b, w = self.bucket(rows, width)
        if not self.capture or self.failed:
            return self._forward(b, w), b
        graph = self._graphs.get((b, w))
        if graph is None:
            graph = self._capture(b, w)
            if graph is None:
                return self._forward(b, w), b
        graph.graph.replay()
        self.replays += 1
        return graph.logits, b

    def advance(self, b: int) -> None:
        self.kv.lengths[:b] += 1  # dummy rows too: a slot's next piece sets its length

    def _forward(self, b: int, w: int) -> torch.Tensor:
        kv = self.kv
        lengths = kv.lengths[:b]
        plan = kv.plan_dense(b, w, positions=lengths.clamp(max=kv.max_len - 1),
                             slots=self._slots[:b])
        with planned(plan):
            out = self.model(input_ids=self.ids[:b].view(1, -1),
                             position_ids=plan.positions.view(1, -1), use_cache=False)
        return out.logits[0]

    def _capture(self, b: int, w: int) -> _Graph | None:
        try:
            graph = _capture(lambda: self._forward(b, w), self._pool)
        except Exception as exc:  # an op that cannot be captured, a driver without graphs
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning("local engine: CUDA graph capture failed, decoding eagerly: %s",
                        self.failed)
            return None
        self._pool = self._pool or graph.graph.pool()
        self._graphs[(b, w)] = graph
        log.info("local engine: captured the decode step for %d rows × %d tokens", b, w)
        return graph


def _capture(fn: Callable[[], torch.Tensor], pool: Any) -> _Graph:
    """Warm up on a side stream (allocator and kernels settle), then record one `fn()`.
    Warm-up passes write the same K/V the replay writes: they change nothing."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        logits = fn()
    return _Graph(graph, logits)
