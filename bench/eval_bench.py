"""`kullm eval` benchmark on the tiny model (or `--model DIR`) with the fake judge on loopback.
Prints a table.

    python -m bench.eval_bench [--model DIR] [--items 24] [--tokens 64]

For concurrency 1, 4 and 16: wall time of a run over the first N instructions (answers through
the real queue and worker, judged by the fake), answers per second, and the judge calls it
took; then a resume of the finished run (nothing answered or judged again).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
from pathlib import Path

from kullm.eval.run import EvalOptions, run_eval
from kullm_core.embedded import EmbeddedRedis
from kullm_core.engine.loader import load_model, load_tokenizer
from kullm_core.engine.local import LocalEngine
from kullm_core.settings import load_settings
from kullm_core.tinymodel import build_tiny_model
from tests.eval.fake_judge import serve_fake_judge


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--items", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = args.model or build_tiny_model(root / "tiny")
        redis = EmbeddedRedis(root / "valkey")
        url = await redis.start()
        settings = load_settings(
            None, data_dir=root, redis={"url": url}, model={"path": str(model_dir)},
            generation={"temperature": 0.0, "max_new_tokens": args.tokens},
        )
        tok = load_tokenizer(str(model_dir))
        engine = LocalEngine(load_model(str(model_dir), settings), tok, max_batch_size=16)
        await engine.start()
        print(f"{'concurrency':>11} {'items':>6} {'wall s':>8} {'answers/s':>10} "
              f"{'judge calls':>12}")
        try:
            async with serve_fake_judge() as judge:
                for c in (1, 4, 16):
                    out = root / f"run{c}"
                    opts = EvalOptions(judge_url=judge.url, judge_model="judge", out=out,
                                       limit=args.items, concurrency=c)
                    before, t0 = len(judge.prompts), time.perf_counter()
                    await run_eval(settings, opts, built=(engine, tok), stdout=io.StringIO(),
                                   stderr=io.StringIO())
                    wall = time.perf_counter() - t0
                    print(f"{c:>11} {args.items:>6} {wall:>8.2f} {args.items / wall:>10.2f} "
                          f"{len(judge.prompts) - before:>12}")
                before, t0 = len(judge.prompts), time.perf_counter()
                await run_eval(settings, opts, built=(engine, tok), stdout=io.StringIO(),
                               stderr=io.StringIO())
                print(f"resume of a finished run: {time.perf_counter() - t0:.2f} s, "
                      f"{len(judge.prompts) - before} judge calls")
        finally:
            await engine.stop()
            await redis.stop()


if __name__ == "__main__":
    asyncio.run(main())
