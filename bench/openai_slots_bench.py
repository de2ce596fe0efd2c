"""The worker's concurrency with the `openai` engine: first-text latency of many conversations
at once against a streaming Chat Completions server that paces every reply at a fixed rate
(like vLLM serving many sequences), with the local engine's 16 slots versus the openai
engine's own `model.openai_concurrency`. Prints a table; the anchor is the 16-slot run.

    python bench/openai_slots_bench.py [--conversations 200] [--tok-s 30] [--tokens 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from kullm.runtime import connect
from kullm_core.client import CoreClient
from kullm_core.embedded import EmbeddedRedis
from kullm_core.engine.loader import load_tokenizer
from kullm_core.engine.openai import OpenAIEngine
from kullm_core.settings import load_settings
from kullm_core.tinymodel import build_tiny_model
from kullm_core.wire import ConversationRef, UserRef
from kullm_core.worker import Worker

USER = UserRef(platform="bench", id="u")


class PacedServer:
    """`/v1/models` and `/v1/chat/completions` streaming `tokens` pieces at `tok_s` each."""

    def __init__(self, tok_s: float, tokens: int) -> None:
        self.delay = 1.0 / tok_s
        self.tokens = tokens
        self.running = 0
        self.peak = 0

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "kullm3"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.json()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            for i in range(self.tokens):
                await asyncio.sleep(self.delay)
                finish = "stop" if i == self.tokens - 1 else None
                chunk = {"choices": [{"index": 0, "delta": {"content": "가"},
                                      "finish_reason": finish}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
        finally:
            self.running -= 1
        return resp


async def one(client: CoreClient, i: int, tag: str) -> float:
    conv = ConversationRef(platform="bench", chat=f"{tag}-{i}")
    t0 = time.perf_counter()
    sub = await client.submit(conv, USER, "안녕하세요", f"{tag}-{i}")
    async for _, e in client.events(sub.job_id):
        if e.type == "delta":
            return time.perf_counter() - t0
        if e.type in ("done", "error"):
            break
    return float("nan")


async def run(slots: int | None, args: argparse.Namespace, url: str, redis_url: str,
              tok: Any, data: Path) -> tuple[list[float], float]:
    settings = load_settings(
        None, data_dir=data, redis={"url": redis_url},
        model={"engine": "openai", "openai_api": "chat", "openai_base_url": url,
               "openai_model": "kullm3",
               "openai_concurrency": slots or 128},
        queue={"max_pending": 100000}, limits={"requests_per_minute": 0, "daily_tokens": 0},
        generation={"max_new_tokens": args.tokens},
    )
    r = connect(redis_url)
    await r.flushall()
    engine = OpenAIEngine.from_settings(settings.model)
    if slots is None:
        engine.slots = settings.batching.max_batch_size  # the old behaviour: 16 slots
    await engine.start()
    worker = Worker(settings, r, engine, tok)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    async with CoreClient(r, settings) as client:
        t0 = time.perf_counter()
        lat = await asyncio.gather(*(one(client, i, f"s{slots}")
                                     for i in range(args.conversations)))
        wall = time.perf_counter() - t0
    stop.set()
    await task
    await engine.stop()
    await r.aclose()
    return lat, wall


def _row(name: str, lat: list[float], wall: float, peak: int) -> str:
    q = statistics.quantiles(lat, n=20)
    return (f"| {name} | {statistics.median(lat):.2f} s | {q[18]:.2f} s | {wall:.1f} s | "
            f"{peak} |")


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--conversations", type=int, default=200)
    p.add_argument("--tok-s", type=float, default=30.0)
    p.add_argument("--tokens", type=int, default=60)
    args = p.parse_args()
    server = PacedServer(args.tok_s, args.tokens)
    app = web.Application()
    app.router.add_get("/v1/models", server.models)
    app.router.add_post("/v1/chat/completions", server.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore
    with tempfile.TemporaryDirectory() as tmp:
        tok = load_tokenizer(str(build_tiny_model(Path(tmp) / "tiny")))
        async with EmbeddedRedis(Path(tmp) / "state") as redis:
            print(f"{args.conversations} conversations at once, server {args.tok_s:g} tok/s, "
                  f"{args.tokens} tokens per reply\n")
            print("| worker slots | first text median | p95 | all done | server peak |")
            print("|---|---|---|---|---|")
            results = {}
            for slots in (None, 128):
                server.peak = 0
                lat, wall = await run(slots, args, url, redis.url, tok, Path(tmp))
                name = "16 (batching.max_batch_size)" if slots is None else f"{slots} (openai)"
                results[slots] = statistics.median(lat)
                print(_row(name, lat, wall, server.peak))
            print(f"\nmedian first text, 16 slots / openai slots: "
                  f"{results[None] / results[128]:.1f}x")
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
