"""The Telegram adapter under load, against the fake Bot API enforcing Telegram's limits.

    python -m bench.telegram_bench [--private 50] [--groups 5] [--per-group 4] [--json]

Three processes, so that none slows another's clock: the adapter alone (`kullm
telegram`; its peak RSS is read from /proc), a worker whose scripted engine streams
Korean text at a steady rate (the adapter is measured, not the model), and this one: an
embedded Valkey, the fake Bot API with the published limits (1 message/s per chat, 20/min per
group, 30/s overall: edits and drafts count) and the users. Questions are the Korean user
instructions in ../shared/data, all sent at once.

Prints limit violations (goal 0), replies complete (goal all), time to first visible text
and to the final text (median, p95), updates per reply, 429s and the adapter's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script as well as with -m
    sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from bots.telegram.render import final_pieces  # noqa: E402
from kullm_core.embedded import EmbeddedRedis  # noqa: E402
from kullm_core.engine.base import GenerationRequest  # noqa: E402
from kullm_core.engine.scripted import ScriptedEngine  # noqa: E402
from kullm_core.keys import Keys  # noqa: E402
from kullm_core.settings import Settings, load_settings  # noqa: E402
from kullm_core.texts import finish_note  # noqa: E402
from kullm_core.wire import DoneEvent, Event, Job, parse_event  # noqa: E402
from kullm_core.worker import Worker  # noqa: E402
from tests.fakes.telegram_api import (  # noqa: E402
    BOT_ID,
    COUNTED,
    TOKEN,
    Call,
    FakeLimits,
    FakeTelegram,
    Msg,
    User,
)

DATA = ROOT.parent / "shared" / "data" / "user_oriented_instructions_ko.jsonl"


def load_prompts(path: Path) -> list[str]:
    """A user message is `instruction`, then a blank line and `input` when there is one."""
    out = []
    for line in path.read_text("utf-8").splitlines():
        item = json.loads(line)
        inputs = [i["input"] for i in item.get("instances", []) if i.get("input")]
        out.append(item["instruction"] + (f"\n\n{inputs[0]}" if inputs else ""))
    return out


def reply_maker(prompts: list[str], seed: int) -> Any:
    """A Korean reply of 200-1,200 characters per question, the same for the same question."""

    def reply(request: GenerationRequest) -> str:
        question = request.messages[-1]["content"]
        rng = random.Random(f"{seed}:{question}")
        target, parts = rng.randint(200, 1200), list[str]()
        while sum(len(p) for p in parts) < target:
            parts.append(rng.choice(prompts).split("\n\n")[0])
        return "\n\n".join(parts)[:target]

    return reply


@dataclass
class Question:
    msg: Msg
    sent_at: float
    done: DoneEvent | None = None
    complete: bool = False


def _chain_ids(tg: FakeTelegram, q: Question) -> set[int]:
    return {m.message_id for m in tg.replies_to(q.msg.chat.id, q.msg.message_id)}


def _calls_of(tg: FakeTelegram, q: Question) -> list[Call]:
    """The successful visible calls that served this question's reply."""
    chat, private = q.msg.chat.id, q.msg.chat.id > 0
    ids = _chain_ids(tg, q) | {q.msg.message_id}
    out = []
    for c in tg.calls:
        if c.method not in COUNTED or c.error or int(c.params.get("chat_id", 0)) != chat:
            continue
        if c.at < q.sent_at:
            continue
        parent = (c.params.get("reply_parameters") or {}).get("message_id")
        if private or parent in ids or int(c.params.get("message_id", 0)) in ids:
            out.append(c)
    return out


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def _ask_everyone(tg: FakeTelegram, args: argparse.Namespace,
                        prompts: list[str]) -> list[Question]:
    rng = random.Random(args.seed)
    pending: list[tuple[int, User, bool]] = []
    for i in range(args.private):
        user = User(20_000 + i, f"사용자{i}", f"user{i}", "ko")
        pending.append((user.id, user, False))
    for g in range(args.groups):
        chat = -1_000_000 - g
        tg.chat(chat, "supergroup", f"그룹 {g}")
        for k in range(args.per_group):
            pending.append((chat, User(30_000 + 10 * g + k, f"멤버{k}", f"m{g}_{k}", "ko"), True))
    questions = []
    for chat, user, group in pending:
        text = rng.choice(prompts)
        sent_at = time.monotonic()
        msg = await (tg.mention(chat, user, text) if group else tg.send_text(chat, user, text))
        questions.append(Question(msg, sent_at))
    return questions


async def _await_reply(redis: Redis, keys: Keys, tg: FakeTelegram, q: Question,
                       within: float) -> None:
    job = Job.id_for(f"tg:{BOT_ID}:{q.msg.chat.id}:{q.msg.message_id}")

    async def finished() -> Event:
        while True:  # the stream's tail, twice a second: cheaper than decoding every delta
            for _, fields in await redis.xrevrange(keys.reply(job), count=1) or []:
                event = parse_event((fields or {})[b"e"])
                if event.type in ("done", "error"):
                    return event
            await asyncio.sleep(0.5)

    try:
        event = await asyncio.wait_for(finished(), within)
        if not isinstance(event, DoneEvent):
            return
        q.done = event
        note = finish_note(q.done.finish_reason, "ko")
        want = [p.text for p in final_pieces(q.done.text, note)]
        await tg.wait_for(lambda: [m.text for m in tg.replies_to(
            q.msg.chat.id, q.msg.message_id)] == want, within)
        q.complete = True
    except TimeoutError:
        pass


def _report(tg: FakeTelegram, questions: list[Question], wall: float, rss: float,
            args: argparse.Namespace) -> dict[str, Any]:
    first, final, updates = [], [], []
    for q in questions:
        calls = _calls_of(tg, q)
        answer = [c for c in calls if not str(c.params.get("text", "")).startswith("⏳")]
        if answer:
            first.append(answer[0].at - q.sent_at)
            final.append(calls[-1].at - q.sent_at)
        updates.append(len(calls))
    return {
        "replies": len(questions),
        "private_chats": args.private,
        "groups": args.groups,
        "questions_per_group": args.per_group,
        "limit_violations": len(tg.violations),
        "replies_complete": sum(q.complete for q in questions),
        "first_text_s_median": round(statistics.median(first), 2) if first else None,
        "first_text_s_p95": round(_pct(first, 0.95), 2),
        "final_text_s_median": round(statistics.median(final), 2) if final else None,
        "final_text_s_p95": round(_pct(final, 0.95), 2),
        "updates_per_reply_mean": round(statistics.mean(updates), 2),
        "updates_per_reply_max": max(updates),
        "flood_429s": sum(1 for c in tg.calls if c.error.startswith("429")),
        "adapter_peak_rss_mb": round(rss, 1),
        "wall_s": round(wall, 1),
    }


def _settings(tmp: Path, url: str, args: argparse.Namespace) -> Settings:
    return load_settings(
        None, data_dir=tmp, redis={"url": url},
        limits={"requests_per_minute": 0, "daily_tokens": 0},
        batching={"max_batch_size": args.batch},
        generation={"max_new_tokens": 2048, "temperature": 0.0},
    )


async def serve_worker(args: argparse.Namespace) -> None:
    """The worker process: scripted engine, stops on SIGTERM."""
    import signal

    from kullm_core.engine.loader import load_tokenizer

    settings = _settings(Path(args.tmp), args.redis, args)
    redis = Redis.from_url(args.redis)
    engine = ScriptedEngine(reply_maker(load_prompts(Path(args.prompts)), args.seed),
                            chunk_chars=args.chunk, delay_s=args.delay)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await Worker(settings, redis, engine, load_tokenizer(args.tokenizer)).run(stop)
    await redis.aclose()


def _worker(url: str, tmp: Path, tokenizer: Path, args: argparse.Namespace
            ) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "bench.telegram_bench", "--serve-worker", "--redis", url,
           "--tmp", str(tmp), "--tokenizer", str(tokenizer), "--prompts", args.prompts,
           "--seed", str(args.seed), "--chunk", str(args.chunk), "--delay", str(args.delay),
           "--batch", str(args.batch)]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "worker.log", "wb"))


def _adapter(url: str, tg: FakeTelegram, tmp: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KULLM_", "TELEGRAM_"))}
    env.update({"TELEGRAM_BOT_TOKEN": TOKEN, "KULLM_TELEGRAM__BASE_URL": tg.base_url,
                "KULLM_REDIS__URL": url, "KULLM_DATA_DIR": str(tmp),
                "KULLM_LOG_LEVEL": os.environ.get("TG_BENCH_ADAPTER_LOG", "WARNING"),
                "PTB_TIMEDELTA": "1",
                "PYTHONPATH": str(ROOT)})
    return subprocess.Popen([sys.executable, "-m", "kullm.cli", "telegram"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "adapter.log", "wb"))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from kullm_core.tinymodel import build_tiny_model

    prompts = load_prompts(Path(args.prompts))
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmpdir:
        tmp = Path(tmpdir)
        server = EmbeddedRedis(tmp)
        url = await server.start()
        tokenizer = await asyncio.to_thread(build_tiny_model, tmp / "tok")
        redis = Redis.from_url(url, max_connections=1024)
        keys = Keys(_settings(tmp, url, args).redis.prefix)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            async with FakeTelegram(FakeLimits()) as tg:
                procs = [_worker(url, tmp, tokenizer, args), _adapter(url, tg, tmp)]
                await tg.wait_for(lambda: any(c.method == "getUpdates" for c in tg.calls), 60)
                start = time.monotonic()
                questions = await _ask_everyone(tg, args, prompts)
                await asyncio.gather(*(_await_reply(redis, keys, tg, q, args.timeout)
                                       for q in questions))
                wall = time.monotonic() - start
                rss = _peak_rss_mb(procs[1].pid)
                return _report(tg, questions, wall, rss, args)
        finally:
            for proc in procs:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 60)
            await redis.aclose()
            await server.stop()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.telegram_bench")
    p.add_argument("--private", type=int, default=50, help="private chats asking at once")
    p.add_argument("--groups", type=int, default=5)
    p.add_argument("--per-group", type=int, default=4, help="members asking at once per group")
    p.add_argument("--chunk", type=int, default=3, help="characters per engine step")
    p.add_argument("--delay", type=float, default=0.05, help="seconds per engine step")
    p.add_argument("--batch", type=int, default=128,
                   help="worker slots (more than the questions: the adapter is measured)")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompts", default=str(DATA))
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    p.add_argument("--serve-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--redis", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    ns = _parse(None)
    if ns.serve_worker:
        asyncio.run(serve_worker(ns))
        sys.exit(0)
    result = asyncio.run(main(ns))
    if ns.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
