"""Slack adapter benchmark against the limit-enforcing fake Slack. Prints a table.

    python bench/slack_bench.py [--engine scripted|tiny] [--mode socket|http]
                                [--threads 30] [--channels 5] [--dms 20]

30 channel threads in 5 channels plus 20 DMs ask at once (Korean prompts from
kullm_core/data/prompts_ko.jsonl). The adapter runs in its own process (so its peak RSS is its
own) with Slack's real limits; the fake answers 429 whenever one is exceeded. The worker uses a
scripted engine streaming Korean at ~100 characters/s (or the tiny model with --engine tiny).
Reported: limit violations (goal 0), replies complete (goal all), duplicate posts (goal 0),
time to first visible text (median, p95), API calls per reply, adapter peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Only light imports here: the adapter child process runs this file too, and its peak RSS
# must be the adapter's, not torch's. The worker, engines and the fake load in `bench()`.
from redis.asyncio import Redis  # noqa: E402

from bots.slack.config import SlackTuning  # noqa: E402
from bots.slack.render import split  # noqa: E402
from bots.slack.target import source_id  # noqa: E402
from kullm_core.client import CoreClient  # noqa: E402
from kullm_core.settings import load_settings  # noqa: E402
from kullm_core.texts import finish_note  # noqa: E402
from kullm_core.wire import DoneEvent, Job  # noqa: E402

if TYPE_CHECKING:
    from kullm_core.engine.base import GenerationRequest
    from tests.fakes.slack_api import FakeSlack, Message

WALL_OFFSET = time.time() - time.monotonic()
PROMPTS = [json.loads(line)["text"] for line in
           (ROOT / "kullm_core/data/prompts_ko.jsonl").read_text("utf-8").splitlines()]
WRITES = ("chat.postMessage", "chat.update", "chat.startStream", "chat.appendStream",
          "chat.stopStream", "chat.delete", "reactions.add", "reactions.remove",
          "assistant.threads.setStatus",
          "chat.postEphemeral")


def scripted_reply(request: GenerationRequest) -> str:
    question = request.messages[-1]["content"]
    n = 4 + len(question) % 9
    body = "".join(f"{i + 1}. 이 질문에 대한 설명을 이어 갑니다. 한국어 답변의 문장입니다.\n"
                   for i in range(n * 2))
    end = "마지막으로, 더 궁금한 점이 있으면 물어보세요."
    return f"**요청 요약:** {question[:60]}\n\n{body}\n{end}"


def _config(redis_url: str, fake: FakeSlack, mode: str, port: int) -> dict[str, Any]:
    from tests.fakes.slack_api import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET

    return {
        "redis": {"url": redis_url},
        "slack": {"bot_token": BOT_TOKEN, "app_token": APP_TOKEN,
                  "signing_secret": SIGNING_SECRET, "base_url": fake.api_url, "mode": mode,
                  "http_port": port},
        "limits": {"requests_per_minute": 0, "daily_tokens": 0},
    }


def adapter_main(config: str) -> None:
    """Child process: run the Slack adapter until SIGTERM, then print its peak RSS."""
    import resource

    from bots.slack import run_slack

    async def _run() -> None:
        settings = load_settings(None, **json.loads(config))
        redis = Redis.from_url(settings.redis.url)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with CoreClient(redis, settings) as client:
            await run_slack(settings, client, stop,
                            tuning=SlackTuning(http_host="127.0.0.1", shutdown_grace_s=2))
        await redis.aclose()

    asyncio.run(_run())
    # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork + exec.
    status = Path("/proc/self/status")
    hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")] \
        if status.exists() else []
    peak_kib = int(hwm[0].split()[1]) if hwm else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mib": peak_kib / 1024}), flush=True)


async def _engine(kind: str, settings: Any, data: Path) -> tuple[Any, Any]:
    from kullm_core.engine.scripted import ScriptedEngine

    if kind == "scripted":
        from kullm_core.engine.loader import load_tokenizer
        from kullm_core.tinymodel import build_tiny_model

        tok = load_tokenizer(str(build_tiny_model(data / "tiny")))
        return ScriptedEngine(scripted_reply, chunk_chars=3, delay_s=0.03), tok
    from kullm_core.engine.loader import load_model, load_tokenizer
    from kullm_core.engine.local import LocalEngine
    from kullm_core.tinymodel import build_tiny_model

    path = str(build_tiny_model(data / "tiny"))
    tok = load_tokenizer(path)
    return LocalEngine(load_model(path, settings), tok, max_batch_size=16), tok


def _expected(done: DoneEvent) -> str:
    note = finish_note(done.finish_reason, "ko")
    return done.text + ("\n\n" + note if note else "")


async def _ask(fake: FakeSlack, args: argparse.Namespace) -> list[tuple[Message, str | None]]:
    asks = []
    for i in range(args.threads):
        channel = f"C0BENCH{i % args.channels}"
        asks.append(fake.user_message(PROMPTS[i % len(PROMPTS)], channel=channel,
                                      user=f"U0USER{i:03d}"))
    for i in range(args.dms):
        asks.append(fake.user_message(PROMPTS[(i + 100) % len(PROMPTS)], channel=f"D0DM{i:03d}",
                                      user=f"U0DM{i:03d}"))
    msgs = await asyncio.gather(*asks)
    return [(m, None if m.channel.startswith("D") else m.ts) for m in msgs]


async def _settle(fake: FakeSlack, client: CoreClient, msg: Message, thread: str | None,
                  timeout: float) -> tuple[bool, str, float]:
    """(shown exactly, expected text, monotonic time of the first delta in Redis)."""
    job = Job.id_for(source_id("T0KULLM01", msg.channel, msg.ts))
    done: DoneEvent | None = None
    first = 0.0
    async for entry_id, event in client.events(job):
        if event.type == "delta" and not first:
            first = int(entry_id.split("-")[0]) / 1000 - WALL_OFFSET
        done = event if isinstance(event, DoneEvent) else None
    if done is None:
        return False, "", first
    want = _expected(done)
    try:
        await fake.wait_for(lambda: fake.reply_text(msg.channel, thread, msg.ts) == want,
                            timeout)
        return True, want, first
    except AssertionError:
        return False, want, first


def _first_visible(fake: FakeSlack, msg: Message, thread: str | None) -> float | None:
    """Monotonic time the first reply text became visible."""
    times = [t for m in fake.bot_messages(msg.channel, thread, msg.ts) for t, v in m.shown
             if v.strip()]
    return min(times) if times else None


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def bench(args: argparse.Namespace) -> None:
    from kullm_core.embedded import EmbeddedRedis
    from kullm_core.worker import Worker
    from tests.fakes.slack_api import FakeSlack

    data = Path(tempfile.mkdtemp(prefix="slack-bench-"))
    async with EmbeddedRedis(data / "redis") as server, FakeSlack(mode=args.mode) as fake:
        redis_url = server.url
        settings = load_settings(None, redis={"url": redis_url}, model={"path": str(data)},
                                 generation={"max_new_tokens": 2000, "temperature": 0.0},
                                 limits={"requests_per_minute": 0, "daily_tokens": 0},
                                 batching={"max_batch_size": 64},
                                 queue={"max_pending": 1000})
        redis = Redis.from_url(redis_url)
        engine, tok = await _engine(args.engine, settings, data)
        port = 0
        if args.mode == "http":
            with socket.socket() as probe:  # a free port for the adapter's HTTP server
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            fake.app_url = f"http://127.0.0.1:{port}/slack/events"
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--adapter",
            json.dumps(_config(redis_url, fake, args.mode, port)),
            stdout=asyncio.subprocess.PIPE, cwd=str(ROOT))
        try:
            async with CoreClient(redis, settings) as client, \
                    Worker(settings, redis, engine, tok):
                if args.mode == "socket":
                    await fake.wait_for(fake.connected, 60, "the adapter to connect")
                else:
                    await asyncio.sleep(3)  # the child's HTTP server starting (bench only)
                t0 = time.monotonic()
                asked = await _ask(fake, args)
                results = await asyncio.gather(*(_settle(fake, client, m, th, args.timeout)
                                                 for m, th in asked))
                wall = time.monotonic() - t0
        finally:
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
        out, _ = await child.communicate()
        rss = json.loads(out.decode().strip().splitlines()[-1])["peak_rss_mib"]
        await redis.aclose()
        _report(fake, asked, results, wall, rss, args)


def _report(fake: FakeSlack, asked: list[tuple[Message, str | None]],
            results: list[tuple[bool, str, float]], wall: float, rss: float,
            args: argparse.Namespace) -> None:
    limit = SlackTuning().max_message_chars
    complete = sum(ok for ok, _, _ in results)
    duplicates = 0
    ttft: list[float] = []
    lag: list[float] = []
    for (msg, thread), (_, want, first_delta) in zip(asked, results, strict=True):
        posted = len(fake.bot_messages(msg.channel, thread, msg.ts))
        duplicates += max(0, posted - len(split(want, limit)))
        seen = _first_visible(fake, msg, thread)
        if seen is not None:
            ttft.append(seen - msg.shown[0][0])
            if first_delta:
                lag.append(max(0.0, seen - first_delta))
    calls = Counter(method for _, method in fake.calls if method in WRITES)
    n = len(asked)
    rows = [
        ("limit violations (429 from Slack limits)", str(sum(fake.violations.values())), "0"),
        ("replies complete (visible == worker reply)", f"{complete}/{n}", "all"),
        ("duplicate posts", str(duplicates), "0"),
        ("time to first visible text, median", f"{statistics.median(ttft):.2f} s", ""),
        ("time to first visible text, p95", f"{_p95(ttft):.2f} s", ""),
        ("  of which adapter (first delta -> visible), median", f"{statistics.median(lag):.2f} s",
         ""),
        ("  of which adapter (first delta -> visible), p95", f"{_p95(lag):.2f} s", ""),
        ("API write calls per reply", f"{sum(calls.values()) / n:.1f}", ""),
        ("adapter peak RSS", f"{rss:.0f} MiB", ""),
        ("wall time until all replies shown", f"{wall:.1f} s", ""),
    ]
    print(f"\nSlack adapter: {args.threads} threads in {args.channels} channels + {args.dms} DMs, "
          f"{args.mode} mode, {args.engine} engine")
    print(f"{'metric':<52}{'value':>12}  goal")
    for name, value, goal in rows:
        print(f"{name:<52}{value:>12}  {goal}")
    print("calls by method: " + ", ".join(f"{k} {v}" for k, v in sorted(calls.items())))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--adapter":
        adapter_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("scripted", "tiny"), default="scripted")
    parser.add_argument("--mode", choices=("socket", "http"), default="socket")
    parser.add_argument("--threads", type=int, default=30)
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--dms", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600.0)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
