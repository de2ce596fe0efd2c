"""A real worker process with the scripted engine (no torch), for kill and signal tests.

    python -m tests.core.scripted_worker WORKER_ID

Settings come from the environment (`KULLM_*`, see `worker_env`); the reply to every message
is `SCRIPT_REPLY` streamed `SCRIPT_CHUNK` characters at a time, `SCRIPT_DELAY_S` apart.
SIGTERM stops it gracefully, like `kullm worker`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from typing import Any

from redis.asyncio import Redis

from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.settings import load_settings
from kullm_core.worker import Worker


def worker_env(redis_url: str, model_dir: str, *, reply: str = "가나다라", chunk: int = 2,
               delay_s: float = 0.02, **settings: str) -> dict[str, str]:
    """Environment for a scripted worker: fast heartbeats, no limits, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KULLM_")}
    env.update({
        "KULLM_REDIS__URL": redis_url, "KULLM_MODEL__PATH": model_dir,
        "KULLM_QUEUE__HEARTBEAT_S": "0.2", "KULLM_QUEUE__RECLAIM_IDLE_S": "1.0",
        "KULLM_LIMITS__REQUESTS_PER_MINUTE": "0", "KULLM_LIMITS__DAILY_TOKENS": "0",
        "SCRIPT_REPLY": reply, "SCRIPT_CHUNK": str(chunk), "SCRIPT_DELAY_S": str(delay_s),
    })
    env.update({f"KULLM_{k.upper()}": v for k, v in settings.items()})
    return env


def spawn(worker_id: str, env: dict[str, str], stderr: Any = subprocess.DEVNULL,
          ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.core.scripted_worker", worker_id], env=env,
        stdout=subprocess.DEVNULL, stderr=stderr,
    )


def _load_tokenizer(path: str) -> Any:
    """The tokenizer `load_tokenizer` gives for this folder (AutoTokenizer resolves its
    `tokenizer_config.json` to this class), without AutoTokenizer's import of torch: these
    workers never touch the model, and several start at once in a test."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)


async def _main(worker_id: str) -> None:
    settings = load_settings(None)
    reply = os.environ.get("SCRIPT_REPLY", "가나다라")
    engine = ScriptedEngine(lambda _r: reply, chunk_chars=int(os.environ.get("SCRIPT_CHUNK", "2")),
                            delay_s=float(os.environ.get("SCRIPT_DELAY_S", "0.02")))
    tokenizer = await asyncio.to_thread(_load_tokenizer, settings.model.path)
    redis = Redis.from_url(settings.redis.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with engine:
        await Worker(settings, redis, engine, tokenizer, worker_id).run(stop)
    await redis.aclose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(sys.argv[1]))
