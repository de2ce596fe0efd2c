"""Core pipeline benchmark on the tiny model (or `--model DIR`). Prints a table.

    python bench/core_bench.py [--model DIR] [--tokens 64]

(1) engine alone: first-token time and tokens/s; (2) pipeline overhead: enqueue -> first delta
read by a consumer, with an engine whose first token is immediate; (3) aggregate tokens/s at
1, 4, 16 concurrent conversations through the pipeline; (4) Redis commands per reply;
(5) peak RSS of this process (worker + engine + consumer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from kullm_core.client import CoreClient
from kullm_core.embedded import EmbeddedRedis
from kullm_core.engine.base import GenerationRequest, SamplingParams
from kullm_core.engine.loader import load_model, load_tokenizer
from kullm_core.engine.local import LocalEngine
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.settings import Settings, load_settings
from kullm_core.tinymodel import build_tiny_model
from kullm_core.wire import ConversationRef, UserRef
from kullm_core.worker import Worker

DATA = Path(__file__).parents[1] / "kullm_core/data/prompts_ko.jsonl"
PROMPTS = [json.loads(line)["text"] for line in DATA.read_text("utf-8").splitlines()]
USER = UserRef(platform="bench", id="u")


async def engine_alone(engine: LocalEngine, tok: Any, n: int) -> tuple[float, float]:
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
    t0 = time.perf_counter()
    first, count = 0.0, 0
    request = GenerationRequest("e", ids, params=SamplingParams(max_new_tokens=n))
    async for out in engine.generate(request):
        if out.text and not first:
            first = time.perf_counter() - t0
        count += out.tokens
    return first, count / (time.perf_counter() - t0)


async def first_delta_latency(client: CoreClient, i: int) -> float:
    conv = ConversationRef(platform="bench", chat=f"lat{i}")
    t0 = time.perf_counter()
    sub = await client.submit(conv, USER, PROMPTS[i % len(PROMPTS)], f"lat-{i}-{time.time()}")
    lat = 0.0
    async for _, e in client.events(sub.job_id):
        if e.type == "delta" and not lat:
            lat = time.perf_counter() - t0
    return lat


async def aggregate(client: CoreClient, conc: int, rnd: int) -> tuple[float, int]:
    async def one(i: int) -> int:
        conv = ConversationRef(platform="bench", chat=f"agg{rnd}-{i}")
        sub = await client.submit(conv, USER, PROMPTS[i], f"agg-{rnd}-{i}")
        async for _, e in client.events(sub.job_id):
            if e.type == "done":
                return e.completion_tokens
        return 0

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(conc))))
    return tokens / (time.perf_counter() - t0), tokens


async def commands(redis: Redis) -> int:
    info = await redis.info("stats")
    return int(info["total_commands_processed"])


def settings_for(url: str, data: Path, n: int) -> Settings:
    return load_settings(
        data_dir=data, redis={"url": url},
        generation={"temperature": 0.0, "max_new_tokens": n, "repetition_penalty": 1.1},
        limits={"requests_per_minute": 0, "daily_tokens": 0},
        queue={"max_pending": 1000}, batching={"max_batch_size": 16},
    )


async def main(model_dir: str | None, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = model_dir or str(build_tiny_model(Path(tmp) / "tiny"))
        async with EmbeddedRedis(Path(tmp) / "state") as server:
            s = settings_for(server.url, Path(tmp), n)
            tok, model = load_tokenizer(path), load_model(path, s)
            redis = Redis.from_url(server.url)
            rows: list[tuple[str, str]] = []
            async with LocalEngine(model, tok, max_batch_size=16) as engine:
                await engine_alone(engine, tok, 8)  # warm up
                ft, tps = await engine_alone(engine, tok, n)
                rows += [("engine alone: first token", f"{ft * 1000:.1f} ms"),
                         ("engine alone: decode, batch 1", f"{tps:.0f} tok/s")]

                scripted = ScriptedEngine(lambda _r: "가" * 8, chunk_chars=1)
                async with CoreClient(redis, s) as client, Worker(s, redis, scripted, tok):
                    for i in range(5):
                        await first_delta_latency(client, i)
                    lats = sorted([await first_delta_latency(client, i) for i in range(200)])
                med, p95 = statistics.median(lats), lats[int(len(lats) * 0.95)]
                rows += [("pipeline: enqueue -> first delta, median", f"{med * 1000:.2f} ms"),
                         ("pipeline: enqueue -> first delta, p95", f"{p95 * 1000:.2f} ms")]

                worker = Worker(s, redis, engine, tok)
                stop = asyncio.Event()
                task = asyncio.create_task(worker.run(stop))
                async with CoreClient(redis, s) as client:
                    base = 0.0
                    for rnd, conc in enumerate((1, 4, 16)):
                        c0 = await commands(redis)
                        agg, tokens = await aggregate(client, conc, rnd)
                        cmds = (await commands(redis) - c0) / conc
                        base = base or agg
                        rows.append((f"pipeline: {conc:2d} concurrent", f"{agg:.0f} tok/s "
                                     f"({agg / base:.1f}x of 1; {tokens} tokens)"))
                        rows.append((f"redis commands per reply at {conc}", f"{cmds:.0f}"))
                stop.set()
                await task
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append(("peak RSS (worker + engine + consumer)", f"{rss:.0f} MiB"))
            await redis.aclose()
    width = max(len(k) for k, _ in rows)
    print(f"model: {model_dir or 'tiny random'}, {n} new tokens per reply")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()
    asyncio.run(main(a.model, a.tokens))
