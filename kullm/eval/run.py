"""`kullm eval`: answer the card's 252 instructions through the real pipeline, have a judge score
them with the card's prompt, write DIR/items.jsonl and DIR/report.json.

The pipeline is the one users get: each instruction is a fresh conversation submitted through
`CoreClient` to the queue, answered by a worker with the configured engine, prompt and
generation settings. The worker runs in this process, under a key prefix of its own on the
configured Redis (or the embedded one): a running `kullm serve` neither takes these jobs nor
answers them with other settings, users' rate limits are untouched, and every key of the run
is deleted at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kullm.eval.data import EvalItem, load_items
from kullm.eval.judge import EVAL_PROMPT, Judge, JudgeUnreachable, Sleep, Verdict
from kullm.eval.measures import measure
from kullm.eval.progress import Progress
from kullm.eval.report import ITEMS, RUN, print_report, read_items, write_report
from kullm_core.client import CoreClient
from kullm_core.errors import ConfigError
from kullm_core.settings import Settings
from kullm_core.wire import ConversationRef, DoneEvent, ErrorEvent, UserRef

log = logging.getLogger(__name__)

EVAL_USER = UserRef(platform="eval", id="kullm-eval", name="kullm eval")


@dataclass
class EvalOptions:
    judge_url: str
    judge_model: str
    out: Path
    judge_key: str = ""
    limit: int | None = None
    concurrency: int = 4
    seed: int = 0
    judge_backoff_s: float = 1.0
    judge_http_retries: int = 6
    judge_sleep: Sleep = field(default=asyncio.sleep)


def eval_settings(settings: Settings) -> Settings:
    """The same settings under a key prefix of this run alone."""
    prefix = f"{settings.redis.prefix[:20]}.eval.{uuid.uuid4().hex[:6]}"
    return settings.model_copy(update={"redis": settings.redis.model_copy(
        update={"prefix": prefix})})


def run_identity(settings: Settings, opts: EvalOptions) -> dict[str, Any]:
    """What makes two runs comparable: resuming with any of it changed would mix answers."""
    m = settings.model
    model: dict[str, Any] = {"engine": m.engine, "path": m.path}
    if m.engine == "openai":
        model.update(openai_base_url=m.openai_base_url, openai_model=m.openai_model,
                     openai_api=m.openai_api)
    return {
        "settings": {"generation": settings.generation.model_dump(mode="json"), "model": model},
        "judge": {"url": opts.judge_url, "model": opts.judge_model,
                  "prompt_sha256": hashlib.sha256(EVAL_PROMPT.encode()).hexdigest()},
    }


def _flat(identity: dict[str, Any]) -> dict[str, Any]:
    """{"generation.temperature": 0.7, ..., "judge.model": ...}; the judge's URL may change."""
    out = {f"{sec}.{k}": v for sec, values in identity.get("settings", {}).items()
           for k, v in values.items()}
    judge = identity.get("judge", {})
    out.update({f"judge.{k}": v for k, v in judge.items() if k != "url"})
    return out


def _check_resumable(out: Path, identity: dict[str, Any]) -> None:
    path = out / RUN
    if not path.exists():
        return
    old, new = _flat(json.loads(path.read_text("utf-8"))), _flat(identity)
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            raise ConfigError(
                f"{out} was run with {key} = {old.get(key)!r}, now {new.get(key)!r}: "
                "resume with the same settings, or use another --out")


@asynccontextmanager
async def pipeline(settings: Settings, built: Any = None) -> AsyncIterator[tuple[CoreClient, Any]]:
    """Redis, the engine and a worker in this process; yields (client, worker task).
    `built`: an (engine, tokenizer) already started (tests), else loaded as `kullm serve` does.
    """
    from kullm.runtime import open_redis
    from kullm.serve import load_engine
    from kullm_core.worker import Worker

    async with open_redis(settings) as redis:
        stop = asyncio.Event()
        owned = built is None
        if owned:
            built = await load_engine(settings, redis, stop)
        engine, tokenizer = built
        if owned:
            await engine.start()
        worker = Worker(settings, redis, engine, tokenizer)
        task = asyncio.create_task(worker.run(stop), name="eval-worker")
        try:
            async with CoreClient(redis, settings) as client:
                yield client, (worker, task)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await task
            if owned:
                await engine.stop()
            with contextlib.suppress(RedisError, OSError):  # Redis gone: the keys go with it
                await _delete_run_keys(redis, settings.redis.prefix)


async def _delete_run_keys(redis: Redis, prefix: str) -> None:
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=500)]
    for i in range(0, len(keys), 500):
        await redis.delete(*keys[i : i + 500])


async def answer(client: CoreClient, item: EvalItem) -> dict[str, Any]:
    """One instruction as a fresh conversation; the record's answer part."""
    conv = ConversationRef(platform="eval", chat=uuid.uuid4().hex, user=EVAL_USER.id)
    began = time.monotonic()
    sub = await client.submit(conv, EVAL_USER, item.message, f"eval:{uuid.uuid4().hex}",
                              check_limits=False)
    rec: dict[str, Any] = {"id": item.id, "instruction": item.instruction, "input": item.input}
    last: Any = sub.error
    if sub.error is None:
        async for _, event in client.events(sub.job_id):
            last = event
    if not isinstance(last, DoneEvent):
        kind = last.kind if isinstance(last, ErrorEvent) else "no answer"
        return {**rec, "response": "", "status": "failed", "error": f"generation: {kind}"}
    t = last.timings
    return {
        **rec, "response": last.text, "finish_reason": last.finish_reason,
        "tokens": {"prompt": last.prompt_tokens, "completion": last.completion_tokens},
        "latency_ms": {"total": round((time.monotonic() - began) * 1000, 1),
                       "first_token": round(t.first_token_ms, 1), "queue": round(t.queue_ms, 1)},
        "measures": measure(last.text, last.finish_reason),
    }


def _judged(rec: dict[str, Any], v: Verdict) -> dict[str, Any]:
    return {**rec, "scores": v.scores, "judge_raw": v.raw, "judge_calls": v.calls,
            "status": "ok" if v.scores is not None else "failed", "error": v.error}


class _Runner:
    def __init__(self, judge: Judge, out: Path, progress: Progress) -> None:
        self.judge = judge
        self.file = out / ITEMS
        self.progress = progress

    def write(self, rec: dict[str, Any]) -> None:
        with self.file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    async def judge_and_write(self, rec: dict[str, Any]) -> None:
        try:
            verdict = await self.judge.score(rec["instruction"], rec["input"], rec["response"])
        except JudgeUnreachable:
            self.write({**rec, "status": "unjudged", "scores": None})  # the answer is kept
            raise
        rec = _judged(rec, verdict)
        self.write(rec)
        self.progress.done(rec["status"] == "ok")

    async def one(self, client: CoreClient | None, item: EvalItem, old: dict[str, Any]) -> None:
        if old.get("measures") is not None and old.get("response") is not None:
            rec = {k: v for k, v in old.items() if k not in ("scores", "judge_raw", "error")}
        else:
            assert client is not None
            rec = await answer(client, item)
            if rec.get("status") == "failed":
                self.write(rec)
                self.progress.done(False)
                return
        await self.judge_and_write(rec)


async def _run_all(runner: _Runner, client: CoreClient | None, todo: list[EvalItem],
                   records: dict[str, dict[str, Any]], concurrency: int,
                   worker_task: asyncio.Task[None] | None) -> None:
    queue: asyncio.Queue[EvalItem] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)

    async def lane() -> None:
        while not queue.empty():
            item = queue.get_nowait()
            await runner.one(client, item, records.get(item.id, {}))

    lanes = [asyncio.create_task(lane()) for _ in range(max(1, min(concurrency, len(todo))))]
    work = asyncio.gather(*lanes)
    watch = {work} | ({worker_task} if worker_task else set())
    try:
        await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            assert worker_task is not None
            exc = worker_task.exception() if not worker_task.cancelled() else None
            raise RuntimeError(f"the worker stopped before the answers were done ({exc})")
        await work
    finally:
        for t in lanes:
            t.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)


async def run_eval(settings: Settings, opts: EvalOptions, *, built: Any = None,
                   stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> dict[str, Any]:
    """Answer, judge, report. Resumable: items already judged in `opts.out` are skipped, and
    answers already generated but not judged are judged without generating them again.

    Raises:
        JudgeUnreachable: the judge cannot be reached (before any answer is generated, or
            when it stays down mid-run; what was done is kept for a rerun).
        ConfigError: `opts.out` holds a run with other settings.
    """
    opts.out.mkdir(parents=True, exist_ok=True)
    identity = run_identity(settings, opts)
    _check_resumable(opts.out, identity)
    records = read_items(opts.out)
    items = load_items(opts.limit)
    todo = [it for it in items if records.get(it.id, {}).get("status") != "ok"]
    fresh = [it for it in todo if records.get(it.id, {}).get("measures") is None]
    progress = Progress(len(items), len(items) - len(todo), stderr)
    async with Judge(opts.judge_url, opts.judge_model, opts.judge_key, seed=opts.seed,
                     backoff_s=opts.judge_backoff_s, http_retries=opts.judge_http_retries,
                     sleep=opts.judge_sleep) as judge:
        await judge.check()
        runner = _Runner(judge, opts.out, progress)
        try:
            if fresh:
                async with pipeline(eval_settings(settings), built) as (client, (worker, task)):
                    _write_run(opts.out, identity, worker)
                    await _run_all(runner, client, todo, records, opts.concurrency, task)
            elif todo:
                await _run_all(runner, None, todo, records, opts.concurrency, None)
        finally:
            progress.close()
    report = write_report(opts.out, opts.seed)
    print_report(report, stdout, opts.out)
    return report


def _write_run(out: Path, identity: dict[str, Any], worker: Any) -> None:
    """run.json: the settings, and what the worker really used (the engine, the model folder
    its tokenizer came from: the tiny random model says so, the system prompt the model saw)."""
    path = out / RUN
    if path.exists():
        return
    run = {**identity,
           "model_used": {"engine": worker.engine.name,
                          "tokenizer": str(getattr(worker.prompt.tok, "name_or_path", ""))},
           "system_prompt_seen_by_model": worker.prompt.effective_system_prompt,
           "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.write_text(json.dumps(run, ensure_ascii=False, indent=2) + "\n", "utf-8")
