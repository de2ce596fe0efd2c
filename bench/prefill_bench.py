"""First tokens of the local engine against `model.generate`, in one process, on CPU.

    .venv/bin/python -m bench.prefill_bench [--layers 12] [--prompt 100] [--join 1000]

On a random Llama of SOLAR's shape scaled to 2 CPU cores (default: 12 layers, hidden 1024,
intermediate 3584, 8 heads / 2 KV heads (4:1 GQA), vocab 32000, fp32: 229M parameters), with
the production sampling (temperature 0.7, top_p 0.9, repetition_penalty 1.1):
(1) first-token time of N simultaneous arrivals (p50 and max over the requests) against one
static `generate` batch of the same prompts (static and dynamic cache);
(2) the running streams' inter-token gaps while a `--join`-token prompt joins N-1 of them:
their normal step (median gap before the join) and their largest gap during it, against the
decode step of a `generate` batch of N-1 (static and dynamic cache).
Prints the numbers and the ratios against the anchors; `--runs` repeats and takes medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from bench.cpu_llama import add_model_args, medians_of
from bench.llama import PRODUCTION, Stamps, Tok, generate_production, prompt_ids
from kullm_core.engine.base import GenerationRequest
from kullm_core.engine.local import LocalEngine

SETTLED = 12
"""Outputs a running stream has before the join (steady decoding)."""


@dataclass
class Stream:
    times: list[float] = field(default_factory=list)  # perf_counter of each output with tokens
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def gaps(self, start: float, end: float) -> list[float]:
        """Gaps ending after `start`, up to the first one ending after `end` (the step after
        the joiner's first token is the first with one more row)."""
        out = []
        for a, b in zip(self.times, self.times[1:], strict=False):
            if b > start:
                out.append(b - a)
            if b > end:
                break
        return out


async def _consume(engine: LocalEngine, rid: str, ids: list[int], new: int,
                   stream: Stream) -> None:
    req = GenerationRequest(rid, ids, params=replace(PRODUCTION, max_new_tokens=new))
    async for out in engine.generate(req):
        if out.tokens:
            stream.times.append(time.perf_counter())
            if len(stream.times) == SETTLED:
                stream.settled.set()


async def arrivals(engine: LocalEngine, n: int, prompt: int, vocab: int) -> list[float]:
    """First-token seconds of `n` requests submitted at once."""
    streams = [Stream() for _ in range(n)]
    t0 = time.perf_counter()
    await asyncio.gather(*(_consume(engine, f"a{i}-{t0}", prompt_ids(i, prompt, vocab), 2, s)
                           for i, s in enumerate(streams)))
    return [s.times[0] - t0 for s in streams]


async def join(engine: LocalEngine, n: int, join_len: int, vocab: int,
               new: int) -> tuple[float, float, float, int, float]:
    """(normal gap, max gap during the join, joiner's first token s, passes for the join,
    the plain steps' own max / median before the join)."""
    streams = [Stream() for _ in range(n)]
    tag = time.perf_counter()
    tasks = [asyncio.create_task(_consume(engine, f"r{i}-{tag}", prompt_ids(i, 32, vocab), new, s))
             for i, s in enumerate(streams)]
    await asyncio.gather(*(s.settled.wait() for s in streams))
    before = engine.passes
    joiner = Stream()
    t_join = time.perf_counter()
    await _consume(engine, f"j-{tag}", prompt_ids(99, join_len, vocab), 1, joiner)
    t_first = joiner.times[0]
    passes = engine.passes - before
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    before_join = [s.gaps(0, t_join)[:-1] for s in streams]
    normal = statistics.median(g for b in before_join for g in b)
    # the noise floor: the largest of the plain steps before the join, against their median
    # (the steps after the first output; every stream's are the same passes)
    plain = before_join[0][1:]
    floor = max(plain) / statistics.median(plain)
    gaps = streams[0].gaps(t_join, t_first)  # every running row is in every step
    top = max(range(len(gaps)), key=gaps.__getitem__)
    print(f"    join: {len(gaps)} gaps, median {statistics.median(gaps) * 1000:.0f} ms, max "
          f"{gaps[top] * 1000:.0f} ms (gap {top + 1}); normal step {normal * 1000:.0f} ms "
          f"(plain steps alone: max / median {floor:.2f}); gaps "
          f"{' '.join(f'{g * 1000:.0f}' for g in gaps)}", flush=True)
    return (normal, max(max(s.gaps(t_join, t_first)) for s in streams), t_first - t_join,
            passes, floor)


def generate_first(model: Any, n: int, prompt: int, vocab: int, cache: str) -> float:
    ids = torch.tensor([prompt_ids(i, prompt, vocab) for i in range(n)])
    stamps = Stamps("cpu")
    t0 = time.perf_counter()
    generate_production(model, ids, 1, stamps, cache)
    return stamps.t[0] - t0


def generate_step(model: Any, n: int, vocab: int, new: int, cache: str) -> float:
    ids = torch.tensor([prompt_ids(i, 32, vocab) for i in range(n)])
    stamps = Stamps("cpu")
    generate_production(model, ids, new, stamps, cache)
    return statistics.median(b - a for a, b in zip(stamps.t[1:], stamps.t[2:], strict=False))


async def run(a: argparse.Namespace, model: Any, vocab: int) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {}

    def put(key: str, value: float) -> None:
        got.setdefault(key, []).append(value)

    async with LocalEngine(model, Tok(), max_batch_size=max(a.n, 16),
                           max_batch_tokens=10**9) as engine:
        engine.eos_ids = set()  # random weights: every request runs its full length
        await arrivals(engine, 2, 16, vocab)  # warm up
        generate_first(model, 2, 16, vocab, "dynamic")
        for r in range(a.runs):
            firsts = await arrivals(engine, a.n, a.prompt, vocab)
            put("engine first p50", statistics.median(firsts))
            put("engine first max", max(firsts))
            for cache in ("static", "dynamic"):
                put(f"generate {cache} first", generate_first(model, a.n, a.prompt, vocab, cache))
            normal, during, first, passes, floor = await join(engine, a.n - 1, a.join, vocab,
                                                             a.new)
            put("plain noise", floor)
            put("engine normal step", normal)
            put("engine max gap in join", during)
            put("engine join first token", first)
            put("join passes", passes)
            for cache in ("static", "dynamic"):
                put(f"generate {cache} step", generate_step(model, a.n - 1, vocab, 24, cache))
            print(f"  run {r + 1}/{a.runs} done", flush=True)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(ap)
    ap.add_argument("-n", type=int, default=16, help="simultaneous arrivals")
    ap.add_argument("--prompt", type=int, default=100, help="tokens per arriving prompt")
    ap.add_argument("--join", type=int, default=1000, help="tokens of the joining prompt")
    ap.add_argument("--new", type=int, default=400, help="running streams' length (enough "
                    "to outlast the join)")
    a, m = medians_of(ap, run)
    ms = {k: f"{v * 1000:.0f} ms" for k, v in m.items()}
    print(f"\n{a.n} simultaneous {a.prompt}-token arrivals, first token:")
    print(f"  engine p50 {ms['engine first p50']}, max {ms['engine first max']}; generate "
          f"static {ms['generate static first']}, dynamic {ms['generate dynamic first']}")
    print(f"  ratio engine max / generate static: "
          f"{m['engine first max'] / m['generate static first']:.2f} (goal <= 1.1); "
          f"/ dynamic: {m['engine first max'] / m['generate dynamic first']:.2f}")
    print(f"\n{a.join}-token prompt joining {a.n - 1} running streams:")
    print(f"  engine normal step {ms['engine normal step']}, max gap during the join "
          f"{ms['engine max gap in join']} ({m['join passes']:.0f} prefill passes), joiner's "
          f"first token {ms['engine join first token']}")
    print(f"  ratio max gap / normal step: "
          f"{m['engine max gap in join'] / m['engine normal step']:.2f} (goal <= 2); the plain "
          f"steps' own max / median before the join (this machine's noise): "
          f"{m['plain noise']:.2f}")
    print(f"  decode step: generate static {ms['generate static step']}, dynamic "
          f"{ms['generate dynamic step']}; engine / static "
          f"{m['engine normal step'] / m['generate static step']:.2f}, / dynamic "
          f"{m['engine normal step'] / m['generate dynamic step']:.2f}")


if __name__ == "__main__":
    main()
