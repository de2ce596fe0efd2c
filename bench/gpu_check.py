"""GPU check: the worker's local engine on a random model of SOLAR-10.7B's exact shape, against
`model.generate` with a static cache, with the production sampling. Run it through the wrapper:

    bash bench/gpu_check.sh              # the GPU image (torch + transformers only), < 5 min
    bash bench/gpu_check.sh --dry-run    # the same on CPU with 2 small layers, < 2 min

Needs only torch and transformers: no weights (the model is built on the device in bf16: 48
layers, hidden 4096, intermediate 14336, 32 heads, 8 KV heads, vocab 32000), no network, not the
project installed, no pydantic (the engine modules import without the settings module).

HBM limit at batch B: B * bandwidth / (weights read per step + the batch's KV cache), weights
without the input embedding (a row lookup, not a read of the matrix): ~21.2 GB for KULLM3, so
226 tok/s on an H200 (4.8 TB/s) and 158 tok/s on an H100 SXM (3.35 TB/s) at batch 1.
Prints a Markdown table and writes it to $OUT/gpu_check.md (+ .json) when $OUT is set. A
watchdog stops the run at `--budget-s` and still writes what was measured (exit 3). Where the
fast path (CUDA graphs + overlap) fails, the rows are measured again eagerly and the table says
so (exit 4): a lent GPU's few minutes give numbers either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers

from bench.llama import (
    PRODUCTION,
    Shape,
    Stamps,
    Tok,
    build,
    generate_production,
    prompt_ids,
    sync,
)
from kullm_core.engine.base import GenerationRequest
from kullm_core.engine.local import LocalEngine

BANDWIDTH_TBS = (("H200", 4.8), ("H100 NVL", 3.9), ("H100 PCIe", 2.0), ("H100", 3.35),
                 ("A100-SXM4-80GB", 2.039), ("A100", 1.555))
"""HBM bandwidth by device name, first match wins (H100 without a suffix: SXM)."""


MAX_LEN = 2048
"""Tokens a request may hold in the check (1,000-token prompts plus the replies): 64 slots of
KULLM3's bf16 KV are 24 GiB."""

SOLAR = Shape(48, 4096, 14336)
DRY = Shape(2, 256, 896, heads=8, kv_heads=2)  # 4:1 GQA like SOLAR; small for 2 CPU cores


@dataclass(frozen=True)
class Plan:
    device: str
    dtype: torch.dtype
    shape: Shape
    new: int           # tokens generated per request in every run
    prompt: int        # the long prompt (1,000 tokens)
    concurrency: tuple[int, ...]
    budget_s: float
    compile_anchor: bool


def plan_for(a: argparse.Namespace) -> Plan:
    if a.dry_run:
        return Plan("cpu", torch.float32, DRY, a.new or 8, 1000, (16, 64), a.budget_s or 100,
                    False)
    return Plan("cuda", torch.bfloat16, SOLAR, a.new or 128, 1000, (16, 64), a.budget_s or 270,
                True)


class Report:
    """Rows (scenario -> engine -> value) and the header; rendered at the end or on timeout."""

    ENGINES = ("local engine", "generate + static cache")

    def __init__(self, started: float, budget_s: float) -> None:
        self.head: list[str] = []
        self.rows: dict[str, dict[str, str]] = {}
        self.raw: dict[str, Any] = {}
        self.started, self.budget_s = started, budget_s
        self.lock = threading.Lock()

    def put(self, scenario: str, engine: str, value: str, **raw: float) -> None:
        with self.lock:
            self.rows.setdefault(scenario, {})[engine] = value
            self.raw.setdefault(scenario, {})[engine] = raw
        print(f"  {scenario} [{engine}]: {value}", flush=True)

    def render(self, note: str = "") -> str:
        with self.lock:
            lines = [*self.head, "", f"| scenario | {' | '.join(self.ENGINES)} |",
                     "|---|" + "---|" * len(self.ENGINES)]
            for scenario, by in self.rows.items():
                cells = [by.get(e, "not run") for e in self.ENGINES]
                lines.append(f"| {scenario} | {' | '.join(cells)} |")
        wall = time.monotonic() - self.started
        lines += ["", f"wall {wall:.0f} s of a {self.budget_s:.0f} s budget{note}"]
        return "\n".join(lines)

    def write(self, note: str = "") -> None:
        text = self.render(note)
        print("\n" + text, flush=True)
        out = os.environ.get("OUT")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            Path(out, "gpu_check.md").write_text(text + "\n", "utf-8")
            Path(out, "gpu_check.json").write_text(json.dumps(
                {"header": self.head, "rows": self.rows, "raw": self.raw}, indent=1), "utf-8")


def bandwidth(device: str, override: float) -> tuple[str, float]:
    if device != "cuda":
        return device, override
    name = torch.cuda.get_device_name()
    found = next((bw for key, bw in BANDWIDTH_TBS if key in name), 0.0)
    return name, override or found


class Probe:
    """Peak memory per engine over its runs, and the HBM limit of each batch."""

    def __init__(self, plan: Plan, weight_bytes: int, bw_tbs: float) -> None:
        self.plan, self.weight_bytes, self.bw = plan, weight_bytes, bw_tbs
        self.peaks: dict[str, tuple[int, int]] = {}

    def before(self) -> None:
        if self.plan.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def after(self, engine: str) -> None:
        if self.plan.device == "cuda":
            a, r = self.peaks.get(engine, (0, 0))
            self.peaks[engine] = (max(a, torch.cuda.max_memory_allocated()),
                                  max(r, torch.cuda.max_memory_reserved()))

    def rate(self, tok_s: float, batch: int, context: int) -> str:
        """`tok_s`, with its fraction of the HBM limit for this batch and mean context."""
        if not self.bw:
            return f"{tok_s:.1f} tok/s"
        kv = batch * context * self.plan.shape.kv_bytes_per_token(self.plan.dtype)
        limit = batch * self.bw * 1e12 / (self.weight_bytes + kv)
        return f"{tok_s:.1f} tok/s ({tok_s / limit:.0%} of {limit:.0f})"


async def _one(engine: LocalEngine, plan: Plan, i: int, prompt: int, new: int,
               t0: float) -> tuple[float, float, int]:
    """(first-token s, last-token s, tokens) since t0 for one request."""
    req = GenerationRequest(f"r{i}-{time.monotonic_ns()}", prompt_ids(i, prompt, plan.shape.vocab),
                            params=replace(PRODUCTION, max_new_tokens=new))
    first = last = 0.0
    tokens = 0
    async for out in engine.generate(req):
        if out.tokens:
            last = time.perf_counter() - t0
            first = first or last
            tokens += out.tokens
    return first, last, tokens


async def eager_decode(model: Any, plan: Plan, probe: Probe, rep: Report, new: int) -> None:
    """Batch-1 decode of the local engine without CUDA graphs (what they are worth)."""
    async with LocalEngine(model, Tok(), max_batch_size=1, max_len=MAX_LEN,
                           decode_graphs=False) as engine:
        engine.eos_ids = set()
        await local_run(engine, plan, 1, 32, 4)
        probe.before()
        ((first, last, tokens),) = await local_run(engine, plan, 1, 32, new)
        probe.after(Report.ENGINES[0])
    rep.put("batch-1 decode, eager (no CUDA graphs)", Report.ENGINES[0],
            probe.rate((tokens - 1) / (last - first), 1, 32 + new))


async def local_run(engine: LocalEngine, plan: Plan, n: int, prompt: int,
                    new: int) -> list[tuple[float, float, int]]:
    t0 = time.perf_counter()
    return list(await asyncio.gather(*(_one(engine, plan, i, prompt, new, t0)
                                       for i in range(n))))


def generate_run(model: Any, plan: Plan, n: int, prompt: int, new: int,
                 compiled: bool = False) -> tuple[float, float, int]:
    """(first-token s, wall s, tokens) of one static batch through `model.generate`."""
    ids = torch.tensor([prompt_ids(i, prompt, plan.shape.vocab) for i in range(n)],
                       device=plan.device)
    stamps = Stamps(plan.device)
    sync(plan.device)
    t0 = time.perf_counter()
    out = generate_production(model, ids, new, stamps, compiled=compiled)
    sync(plan.device)
    wall = time.perf_counter() - t0
    return stamps.t[0] - t0, wall, (out.shape[1] - prompt) * n


def _pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


async def measure(model: Any, plan: Plan, probe: Probe, rep: Report, clock: Any,
                  fast: bool = True) -> None:
    """Every row; `fast`: the local engine with CUDA graphs and overlap (on the CPU the same
    bucketed passes, eager, and the same steps queued ahead), else plain eager steps."""
    local, anchor = Report.ENGINES
    s_kv = plan.shape.kv_bytes_per_token(plan.dtype)
    async with LocalEngine(model, Tok(), max_batch_size=max(plan.concurrency),
                           max_batch_tokens=10**9, max_len=MAX_LEN,
                           decode_graphs=fast, overlap=fast) as engine:
        engine.eos_ids = set()  # random weights: every request runs its full length
        await local_run(engine, plan, 1, 32, 4)  # warm up
        generate_run(model, plan, 1, 32, 4)
        new, ctx = plan.new, plan.prompt + plan.new // 2

        probe.before()
        ((first, last, tokens),) = await local_run(engine, plan, 1, 32, new)
        probe.after(local)
        rep.put("batch-1 decode", local, probe.rate((tokens - 1) / (last - first), 1, 32 + new))
        probe.before()
        ((first, _, _),) = await local_run(engine, plan, 1, plan.prompt, 1)
        probe.after(local)
        rep.put("first token, 1,000-token prompt", local, f"{first * 1000:.0f} ms")
        if plan.device == "cuda" and fast:
            await eager_decode(model, plan, probe, rep, new)
        probe.before()
        g_first, g_wall, g_tok = generate_run(model, plan, 1, 32, new)
        probe.after(anchor)
        rep.put("batch-1 decode", anchor,
                probe.rate((g_tok - 1) / (g_wall - g_first), 1, 32 + new))
        probe.before()
        g_first, _, _ = generate_run(model, plan, 1, plan.prompt, 1)
        probe.after(anchor)
        rep.put("first token, 1,000-token prompt", anchor, f"{g_first * 1000:.0f} ms")

        for n in plan.concurrency:
            if clock() < 15:
                for name in Report.ENGINES:
                    rep.put(f"{n} × 1,000-token: aggregate", name, "skipped (budget)")
                continue
            probe.before()
            runs = await local_run(engine, plan, n, plan.prompt, new)
            probe.after(local)
            firsts = [f for f, _, _ in runs]
            wall = max(last for _, last, _ in runs)
            rep.put(f"{n} × 1,000-token: aggregate", local,
                    probe.rate(sum(t for _, _, t in runs) / wall, n, ctx))
            rep.put(f"{n} × 1,000-token: first token p50 / p95", local,
                    f"{_pct(firsts, 50) * 1000:.0f} / {_pct(firsts, 95) * 1000:.0f} ms")
            if clock() < 15:
                rep.put(f"{n} × 1,000-token: aggregate", anchor, "skipped (budget)")
                continue
            probe.before()
            g_first, g_wall, g_tok = generate_run(model, plan, n, plan.prompt, new)
            probe.after(anchor)
            rep.put(f"{n} × 1,000-token: aggregate", anchor, probe.rate(g_tok / g_wall, n, ctx))
            rep.put(f"{n} × 1,000-token: first token p50 / p95", anchor,
                    f"{g_first * 1000:.0f} / {g_first * 1000:.0f} ms (one static batch)")
        rep.head.append(f"- local engine: {engine.kv_slots} slots of {MAX_LEN} tokens, KV "
                        f"cache {engine.kv_slots * MAX_LEN * s_kv / 2**30:.1f} GiB")
        graphs = engine.graphs
        if graphs is not None:
            state = f"failed ({graphs.failed[:120]})" if graphs.failed else (
                f"{graphs.captured} captured, {graphs.replays} replays" if graphs.capture
                else "none (no CUDA: the same bucketed passes ran eagerly)")
            rep.head.append(f"- local engine's CUDA graphs: {state}")
        rep.head.append(f"- local engine: {engine.ahead} of {engine.steps} decode steps queued "
                        "before the previous step's tokens were read (overlap)")
    for engine_name, (alloc, reserved) in probe.peaks.items():
        rep.put("peak memory allocated / reserved", engine_name,
                f"{alloc / 2**30:.1f} / {reserved / 2**30:.1f} GiB")
    if plan.compile_anchor and clock() > 120:
        # transformers' own default with a static cache on CUDA: torch.compile + CUDA graphs
        scenario = "batch-1 decode, generate + static cache + torch.compile"
        try:
            generate_run(model, plan, 1, 32, 8, compiled=True)  # compiles
            g_first, g_wall, g_tok = generate_run(model, plan, 1, 32, new, compiled=True)
            eager = "" if hasattr(model, "_compiled_call") else " (transformers ran it eager)"
            rep.put(scenario, anchor,
                    probe.rate((g_tok - 1) / (g_wall - g_first), 1, 32 + new) + eager)
        except Exception as exc:  # a compiler missing on the image must not lose the table
            rep.put(scenario, anchor, f"failed: {type(exc).__name__}: {str(exc)[:80]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, 2 small layers, float32")
    ap.add_argument("--new", type=int, default=0, help="tokens per request (128; dry run 8)")
    ap.add_argument("--budget-s", type=float, default=0, help="stop at (270 s; dry run 100 s)")
    ap.add_argument("--bandwidth-tbs", type=float, default=0.0,
                    help="HBM bandwidth, TB/s (default: by device name)")
    a = ap.parse_args()
    plan = plan_for(a)
    started = time.monotonic()
    rep = Report(started, plan.budget_s)

    def clock() -> float:
        """Seconds left of the budget."""
        return plan.budget_s - (time.monotonic() - started)

    def watchdog() -> None:
        rep.write(" — STOPPED AT THE BUDGET: the rows not run did not fit")
        os._exit(3)

    timer = threading.Timer(plan.budget_s, watchdog)
    timer.daemon = True
    timer.start()
    if plan.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}); use --dry-run on CPU")
        return 2
    name, bw = bandwidth(plan.device, a.bandwidth_tbs)
    model = build(plan.shape, plan.device, plan.dtype)
    params = sum(p.numel() for p in model.parameters())
    read = params - model.get_input_embeddings().weight.numel()
    itemsize = torch.finfo(plan.dtype).bits // 8
    s = plan.shape
    rep.head = [
        f"## kullm gpu check{' (DRY RUN: CPU, 2 small layers)' if a.dry_run else ''}",
        f"- device: {name}; HBM {f'{bw} TB/s' if bw else 'unknown (no HBM fractions)'}",
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"- model: random Llama, {s.layers} layers, hidden {s.hidden}, intermediate "
        f"{s.intermediate}, {s.heads} heads / {s.kv_heads} KV, vocab {s.vocab}; "
        f"{params / 1e9:.2f}B params, {str(plan.dtype).removeprefix('torch.')}; "
        f"{read * itemsize / 1e9:.2f} GB read per token (embedding excluded); KV "
        f"{s.kv_bytes_per_token(plan.dtype) / 1024:.0f} KiB per token; built in "
        f"{time.monotonic() - started:.0f} s",
        f"- sampling: temperature {PRODUCTION.temperature}, top_p {PRODUCTION.top_p}, "
        f"repetition_penalty {PRODUCTION.repetition_penalty} (production defaults); "
        f"{plan.new} new tokens per request; HBM % = of B x bandwidth / (weights + KV)",
    ]
    print("\n".join(rep.head), flush=True)
    probe = Probe(plan, read * itemsize, bw)
    code = 0
    for fast in (True, False):  # a failure of the fast path still leaves eager numbers
        try:
            asyncio.run(measure(model, plan, probe, rep, clock, fast))
            break
        except Exception as exc:
            traceback.print_exc()
            what = "CUDA graphs + overlap" if fast else "eager"
            rep.head.append(f"- the {what} run FAILED: {type(exc).__name__}: "
                            f"{str(exc)[:300]} (traceback on stderr)")
            code = 4
            if not fast or clock() < 60:
                break
            rep.head.append("- rows measured again by an eager run (no CUDA graphs, no "
                            "overlap) where it got to them")
    timer.cancel()
    rep.write()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
