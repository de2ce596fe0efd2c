"""The local engine's decode step on long histories against `model.generate`, on CPU.

    .venv/bin/python -m bench.kv_bench [--layers 12] [-n 16] [--prompt 1000] [--runs 1]

Same random SOLAR-shaped Llama as `bench/prefill_bench.py` (229M parameters, fp32, the
production sampling). (1) Decode step with `n` requests of `--prompt` tokens each: the engine's
median inter-token gap once all of them decode, against the median step of one static
`generate` batch of the same prompts (static and dynamic cache). (2) Flat step: one long
stream's gaps while the other `n - 1` rows finish one after another and as many new requests
join (a copy of the cache on leave or join would show up as spikes): its median, p95 and
largest gap, and its step once it decodes alone.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from bench.cpu_llama import add_model_args, medians_of
from bench.llama import PRODUCTION, Stamps, Tok, generate_production, prompt_ids
from kullm_core.engine.base import GenerationRequest
from kullm_core.engine.local import LocalEngine


async def _times(engine: LocalEngine, rid: str, ids: list[int], new: int) -> list[float]:
    req = GenerationRequest(rid, ids, params=replace(PRODUCTION, max_new_tokens=new))
    times = []
    async for out in engine.generate(req):
        if out.tokens:
            times.append(time.perf_counter())
    return times


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def engine_step(engine: LocalEngine, n: int, prompt: int, new: int, vocab: int) -> float:
    """Median gap of `n` requests' outputs after the last first token."""
    tag = time.perf_counter()
    runs = await asyncio.gather(*(_times(engine, f"s{i}-{tag}", prompt_ids(i, prompt, vocab), new)
                                  for i in range(n)))
    start = max(t[0] for t in runs)
    return statistics.median(g for t in runs for a, g in zip(t, _gaps(t), strict=False)
                             if a >= start)


async def flat(engine: LocalEngine, n: int, prompt: int, vocab: int) -> dict[str, float]:
    """A long stream's gaps while the others leave one by one and new ones take their slots."""
    tag = time.perf_counter()
    long = asyncio.create_task(_times(engine, f"long-{tag}", prompt_ids(0, prompt, vocab),
                                      8 * n + 60))
    others = [_times(engine, f"o{i}-{tag}", prompt_ids(i + 1, 32, vocab), 8 + 8 * i)
              for i in range(n - 1)]  # leave at staggered steps
    joiners = [_times(engine, f"j{i}-{tag}", prompt_ids(100 + i, 32, vocab), 4 * n)
               for i in range(n // 2)]  # wait for a free slot, join, leave later
    await asyncio.gather(*others, *joiners)
    gaps = _gaps(await long)
    return {"median": statistics.median(gaps), "p95": statistics.quantiles(gaps, n=20)[-1],
            "max": max(gaps), "alone": statistics.median(gaps[-20:])}


def generate_step(model: Any, n: int, prompt: int, new: int, vocab: int, cache: str) -> float:
    ids = torch.tensor([prompt_ids(i, prompt, vocab) for i in range(n)])
    stamps = Stamps("cpu")
    generate_production(model, ids, new, stamps, cache)
    return statistics.median(_gaps(stamps.t[1:]))


async def run(a: argparse.Namespace, model: Any, vocab: int) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {}
    async with LocalEngine(model, Tok(), max_batch_size=a.n,
                           max_batch_tokens=10**9, max_len=2048) as engine:
        engine.eos_ids = set()  # random weights: every request runs its full length
        await _times(engine, "warm", prompt_ids(0, 16, vocab), 2)
        for r in range(a.runs):
            got.setdefault("engine", []).append(
                await engine_step(engine, a.n, a.prompt, a.new, vocab))
            for cache in ("static", "dynamic"):
                got.setdefault(f"generate {cache}", []).append(
                    generate_step(model, a.n, a.prompt, a.new, vocab, cache))
            for k, v in (await flat(engine, a.n, a.prompt, vocab)).items():
                got.setdefault(f"flat {k}", []).append(v)
            print(f"  run {r + 1}/{a.runs} done", flush=True)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(ap)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=1000)
    ap.add_argument("--new", type=int, default=24)
    a, m = medians_of(ap, run)
    ms = {k: f"{v * 1000:.1f} ms" for k, v in m.items()}
    print(f"\n{a.n} × {a.prompt}-token requests, decode step:")
    print(f"  engine {ms['engine']}; generate static {ms['generate static']}, dynamic "
          f"{ms['generate dynamic']}")
    print(f"  ratio engine / generate static: {m['engine'] / m['generate static']:.2f} "
          f"(goal <= 1.1); / dynamic: {m['engine'] / m['generate dynamic']:.2f}")
    print(f"\none {a.prompt}-token stream while {a.n - 1} rows leave and {a.n // 2} join:")
    print(f"  gaps: median {ms['flat median']}, p95 {ms['flat p95']}, max {ms['flat max']} "
          f"(max / median {m['flat max'] / m['flat median']:.2f}); alone at the end "
          f"{ms['flat alone']}")


if __name__ == "__main__":
    main()
