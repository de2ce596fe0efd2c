"""One chat floods the Telegram bot while 20 other chats talk: are the others slowed down?

    python -m bench.flood_bench [--chats 20] [--flood 1000] [--over 10] [--json]

Per mode, fresh processes (as in `bench.telegram_bench`): an embedded Valkey, a worker with
a scripted engine, the adapter (`kullm telegram`) and the fake Bot API enforcing Telegram's
limits. The bystanders ask one question each, spread over the flood's window; the flooder
sends `--flood` messages in `--over` seconds from one private chat. Modes:

- `quiet`: no flood (the baseline);
- `allowed`: the flooder is allowed (default limits: 10 requests a minute, so most of the
  flood is refused);
- `denied`: the flooder is not on the allowlist.

Measuring starts once the worker heartbeats and a warm-up question was answered. Prints, per
run, the bystanders' time to first visible text (median, p95), their replies complete and what
the flooder saw (messages in its chat); then per mode the median over `--repeat` interleaved
runs and the ratio of each flood mode's median and p95 to the quiet mode's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script as well as with -m
    sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from bench.telegram_bench import (  # noqa: E402
    DATA,
    Question,
    _await_reply,
    _calls_of,
    _pct,
    _peak_rss_mb,
    _worker,
    load_prompts,
)
from kullm_core.embedded import EmbeddedRedis  # noqa: E402
from kullm_core.keys import Keys  # noqa: E402
from tests.fakes.telegram_api import TOKEN, FakeLimits, FakeTelegram, User  # noqa: E402

FLOODER = User(66_666, "Flooder", "flooder", "ko")
WARM_UP = User(19_999, "준비", "warmup", "ko")


def _adapter(url: str, tg: FakeTelegram, tmp: Path, allowed: list[str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KULLM_", "TELEGRAM_"))}
    env.update({"TELEGRAM_BOT_TOKEN": TOKEN, "KULLM_TELEGRAM__BASE_URL": tg.base_url,
                "KULLM_REDIS__URL": url, "KULLM_DATA_DIR": str(tmp),
                "KULLM_LOG_LEVEL": os.environ.get("FLOOD_BENCH_ADAPTER_LOG", "INFO"),
                "KULLM_LIMITS__ALLOWED_USERS": json.dumps(allowed),
                "PTB_TIMEDELTA": "1", "PYTHONPATH": str(ROOT)})
    return subprocess.Popen([sys.executable, "-m", "kullm.cli", "telegram"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "adapter.log", "wb"))


async def _flood(tg: FakeTelegram, n: int, over_s: float) -> None:
    start = time.monotonic()
    for i in range(n):
        await tg.send_text(FLOODER.id, FLOODER, f"도배 {i}")
        delay = start + over_s * (i + 1) / n - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def _bystanders(tg: FakeTelegram, users: list[User], prompts: list[str],
                      over_s: float) -> list[Question]:
    start, out = time.monotonic(), []
    for i, user in enumerate(users):
        delay = start + over_s * i / len(users) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent_at = time.monotonic()
        msg = await tg.send_text(user.id, user, prompts[i % len(prompts)])
        out.append(Question(msg, sent_at))
    return out


async def _warm_up(redis: Redis, tg: FakeTelegram, prompt: str, within: float) -> None:
    """Measure from a running pipeline: the worker's heartbeat is there and one question
    (from a chat that is not counted) has been answered."""
    keys = Keys()
    deadline = time.monotonic() + within
    while not [k async for k in redis.scan_iter(match=keys.worker_pattern())]:
        if time.monotonic() > deadline:
            raise TimeoutError("no worker heartbeat")
        await asyncio.sleep(0.1)
    q = Question(await tg.send_text(WARM_UP.id, WARM_UP, prompt), time.monotonic())
    await _await_reply(redis, keys, tg, q, within)
    if not q.complete:
        raise TimeoutError("the warm-up question was not answered")


def _first_texts(tg: FakeTelegram, questions: list[Question]) -> list[float]:
    first = []
    for q in questions:
        answer = [c for c in _calls_of(tg, q)
                  if not str(c.params.get("text", "")).startswith("⏳")]
        if answer:
            first.append(answer[0].at - q.sent_at)
    return first


async def run_mode(mode: str, args: argparse.Namespace, prompts: list[str]) -> dict[str, Any]:
    users = [User(20_000 + i, f"사용자{i}", f"user{i}", "ko") for i in range(args.chats)]
    allowed = [f"tg:{u.id}" for u in [WARM_UP, *users]] if mode == "denied" else []
    with tempfile.TemporaryDirectory(prefix="flood-bench-") as tmpdir:
        tmp = Path(tmpdir)
        server = EmbeddedRedis(tmp)
        url = await server.start()
        from kullm_core.tinymodel import build_tiny_model

        tokenizer = await asyncio.to_thread(build_tiny_model, tmp / "tok")
        redis = Redis.from_url(url, max_connections=256)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            async with FakeTelegram(FakeLimits()) as tg:
                procs = [_worker(url, tmp, tokenizer, args), _adapter(url, tg, tmp, allowed)]
                await tg.wait_for(lambda: any(c.method == "getUpdates" for c in tg.calls), 60)
                try:
                    await _warm_up(redis, tg, prompts[0], 60.0)
                except TimeoutError:
                    log = (tmp / "adapter.log").read_text("utf-8", "replace")[-2000:]
                    print(f"{mode}: the pipeline did not answer a warm-up question; skipped."
                          f"\nadapter log tail:\n{log}", file=sys.stderr)
                    return {"mode": mode, "failed": True}
                flood = (asyncio.create_task(_flood(tg, args.flood, args.over))
                         if mode != "quiet" else None)
                questions = await _bystanders(tg, users, prompts, args.over)
                await asyncio.gather(*(_await_reply(redis, Keys(), tg, q, args.timeout)
                                       for q in questions))
                if flood is not None:
                    await flood
                first = _first_texts(tg, questions)
                return {
                    "mode": mode,
                    "bystanders": len(questions),
                    "complete": sum(q.complete for q in questions),
                    "first_text_s_median": round(statistics.median(first), 2) if first else None,
                    "first_text_s_p95": round(_pct(first, 0.95), 2),
                    "flooder_sent": args.flood if flood is not None else 0,
                    "flooder_saw_messages": len(tg.bot_messages(FLOODER.id)),
                    "limit_violations": len(tg.violations),
                    "adapter_peak_rss_mb": round(_peak_rss_mb(procs[1].pid), 1),
                }
        finally:
            for proc in procs:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 60)
            await redis.aclose()
            await server.stop()


def _summary(runs: list[dict[str, Any]], modes: list[str]) -> list[dict[str, Any]]:
    """Per mode: the median over repeats of each run's median and p95, and their ratio to
    the quiet mode's (a shared machine is noisy: one run proves little)."""
    out = []
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode and not r.get("failed")]
        if not mine:
            continue
        row: dict[str, Any] = {"mode": mode, "runs": len(mine),
                               "complete": sum(r["complete"] for r in mine),
                               "bystanders": sum(r["bystanders"] for r in mine),
                               "flooder_saw_messages_max": max(r["flooder_saw_messages"]
                                                               for r in mine)}
        for stat in ("median", "p95"):
            values = [r[f"first_text_s_{stat}"] for r in mine if r[f"first_text_s_{stat}"]]
            row[f"first_text_s_{stat}"] = round(statistics.median(values), 3) if values else None
        out.append(row)
    base = next((r for r in out if r["mode"] == "quiet"), None)
    for row in out:
        if base is not None and row is not base:
            for stat in ("median", "p95"):
                ours, theirs = row[f"first_text_s_{stat}"], base[f"first_text_s_{stat}"]
                row[f"ratio_{stat}"] = round(ours / theirs, 2) if ours and theirs else None
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    prompts = load_prompts(Path(args.prompts))
    modes = args.modes.split(",")
    runs = [await run_mode(mode, args, prompts)
            for _ in range(args.repeat) for mode in modes]  # interleaved: drift hits all
    return {"chats": args.chats, "flood": args.flood, "over_s": args.over, "runs": runs,
            "summary": _summary(runs, modes)}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.flood_bench")
    p.add_argument("--chats", type=int, default=20, help="bystander chats, one question each")
    p.add_argument("--flood", type=int, default=1000, help="messages from the flooding chat")
    p.add_argument("--over", type=float, default=10.0, help="seconds the flood (and the "
                   "bystanders' questions) are spread over")
    p.add_argument("--modes", default="quiet,allowed,denied")
    p.add_argument("--repeat", type=int, default=3, help="runs per mode, interleaved")
    p.add_argument("--chunk", type=int, default=20, help="characters per engine step")
    p.add_argument("--delay", type=float, default=0.05, help="seconds per engine step")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompts", default=str(DATA))
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    return p.parse_args(argv)


if __name__ == "__main__":
    ns = _parse(None)
    result = asyncio.run(main(ns))
    if ns.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        for run in result["runs"]:
            print(" ".join(f"{k}={v}" for k, v in run.items()))
        print("summary (median over runs):")
        for row in result["summary"]:
            print("  " + " ".join(f"{k}={v}" for k, v in row.items()))
