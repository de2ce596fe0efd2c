"""GPU check: the worker's engine on a random-weight model of SOLAR-10.7B's exact shape.

No weights can be downloaded on the GPU machine, so the model is built directly on the device
in bf16 (48 layers, hidden 4096, intermediate 14336, 32 heads, 8 KV heads, vocab 32000) and
driven through the same `LocalEngine` the worker uses. Prints a table:

    python bench/gpu_check.py                 # on a CUDA machine, ~5 minutes
    python bench/gpu_check.py --layers 2 --device cpu --dtype float32   # smoke test anywhere

HBM roofline for batch-1 decode: bytes of weights per token / memory bandwidth
(~21.4 GB per token; H100 SXM 3.35 TB/s -> ~140 tok/s; H200 4.8 TB/s -> ~200 tok/s).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kullm_core.engine.base import GenerationRequest, SamplingParams
from kullm_core.engine.local import LocalEngine


class _Tok:
    """Decoding stand-in: ids -> printable text (the engine only needs `decode`)."""

    eos_token_id = 2

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(0xAC00 + (i % 11172)) for i in ids)


def build(layers: int, device: str, dtype: torch.dtype) -> Any:
    cfg = LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        model.lm_head.weight[2].zero_()  # never stop early: every request runs its length
    return model.eval()


async def run(
    engine: LocalEngine, n_req: int, prompt_len: int, new: int
) -> tuple[float, float, int]:
    """(wall seconds, median first-token seconds, generated tokens) for n_req at once."""
    firsts: list[float] = []

    async def one(i: int) -> int:
        ids = [1] + [(7 * i + j) % 31000 + 100 for j in range(prompt_len - 1)]
        req = GenerationRequest(f"r{i}-{time.time()}", ids,
                                params=SamplingParams(max_new_tokens=new))
        t0, count, got = time.perf_counter(), 0, False
        async for out in engine.generate(req):
            if not got and out.tokens:
                firsts.append(time.perf_counter() - t0)
                got = True
            count += out.tokens
        return count

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(n_req))))
    return time.perf_counter() - t0, statistics.median(firsts), tokens


async def main(a: argparse.Namespace) -> None:
    dtype = getattr(torch, a.dtype)
    t0 = time.perf_counter()
    model = build(a.layers, a.device, dtype)
    params = sum(p.numel() for p in model.parameters())
    weight_gb = params * torch.finfo(dtype).bits / 8 / 1e9
    print(f"device: {torch.cuda.get_device_name() if a.device == 'cuda' else a.device}; "
          f"{params / 1e9:.2f}B params ({weight_gb:.1f} GB) "
          f"built in {time.perf_counter() - t0:.0f} s")
    rows: list[tuple[str, str]] = []
    async with LocalEngine(model, _Tok(), max_batch_size=max(a.concurrency),
                           max_batch_tokens=10**9) as engine:
        await run(engine, 1, 32, 8)  # warm up
        wall, _, tokens = await run(engine, 1, 32, a.new)
        tps = tokens / wall
        row = f"{tps:.1f} tok/s"
        if a.bandwidth_tbs:
            roof = a.bandwidth_tbs * 1e12 / (weight_gb * 1e9)
            row += f" ({tps / roof:.0%} of the {roof:.0f} tok/s HBM limit)"
        rows.append(("batch-1 decode", row))
        _, first, _ = await run(engine, 1, 1000, 1)
        rows.append(("first token, 1,000-token prompt", f"{first * 1000:.0f} ms"))
        for n in a.concurrency:
            wall, first, tokens = await run(engine, n, 200, a.new)
            rows.append((f"{n} concurrent (200-token prompts)",
                         f"{tokens / wall:.0f} tok/s aggregate, "
                         f"first token median {first * 1000:.0f} ms"))
    if a.device == "cuda":
        rows.append(("peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--bandwidth-tbs", type=float, default=3.35,
                    help="HBM bandwidth of the card in TB/s (H100 SXM 3.35, H200 4.8)")
    asyncio.run(main(ap.parse_args()))
