"""The CPU benches' model: a random Llama of SOLAR's shape scaled to 2 cores (default 12
layers, hidden 1024, intermediate 3584, 8 heads / 2 KV heads (4:1 GQA), vocab 32000, fp32:
229M parameters)."""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Callable, Coroutine
from typing import Any

import torch

from bench.llama import Shape, build

Run = Callable[[argparse.Namespace, Any, int], Coroutine[Any, Any, dict[str, list[float]]]]
"""A bench's runs: (arguments, model, vocab) -> every number it measured, per run."""


def add_model_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=1)


def medians_of(ap: argparse.ArgumentParser, run: Run) -> tuple[argparse.Namespace,
                                                                 dict[str, float]]:
    """Parse the arguments, build the model, `run` the bench: each number's median."""
    a = ap.parse_args()
    model, shape = cpu_llama(a)
    got = asyncio.run(run(a, model, shape.vocab))
    return a, {k: statistics.median(v) for k, v in got.items()}


def cpu_llama(a: argparse.Namespace) -> tuple[Any, Shape]:
    """Build it (and say what it is) from `add_model_args`' arguments."""
    shape = Shape(a.layers, a.hidden, a.hidden * 7 // 2, heads=a.hidden // 128,
                  kv_heads=a.hidden // 512)
    model = build(shape, "cpu", torch.float32)
    params = sum(p.numel() for p in model.parameters())
    print(f"random Llama: {shape.layers} layers, hidden {shape.hidden}, intermediate "
          f"{shape.intermediate}, {shape.heads}/{shape.kv_heads} heads, vocab {shape.vocab}, "
          f"fp32, {params / 1e6:.0f}M params; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {a.runs} run(s), medians", flush=True)
    return model, shape
