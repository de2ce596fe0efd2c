"""`kullm serve` / `kullm worker`: Redis, then the adapters, then the model and the worker.

Order matters both ways. At start the adapters come online before a long model load finishes
(users are told the bot is warming up, their messages wait in the queue). At stop (SIGINT or
SIGTERM) the worker finishes or hands back its jobs and the adapters finish their replies
while Redis is still there; the embedded server stops last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Collection, Coroutine
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kullm.runtime import Embedded, open_redis, stop_on_signals
from kullm_core.client import CoreClient
from kullm_core.errors import ConfigError, KullmError
from kullm_core.keys import WARMING_TTL_S, Keys
from kullm_core.redis_checks import check_memory_policy
from kullm_core.redis_text import owner_id, release_owned
from kullm_core.settings import Settings
from kullm_core.worker import Worker

log = logging.getLogger("kullm")

Runner = Callable[[Settings, CoreClient, asyncio.Event], Coroutine[Any, Any, None]]
T = TypeVar("T")


def configured_adapters(settings: Settings) -> list[tuple[str, Runner]]:
    """The platforms whose credentials are set. A half-configured one is a `ConfigError`
    naming what is missing (not silently "no chat platform configured")."""
    from kullm.adapters import runner

    found: list[tuple[str, Runner]] = []
    if settings.telegram.token.get_secret_value():
        found.append(("telegram", runner("telegram")))
    s = settings.slack
    bot, app, secret = (v.get_secret_value() for v in (s.bot_token, s.app_token, s.signing_secret))
    if bot or app or secret:
        missing = []
        if not bot:
            missing.append("SLACK_BOT_TOKEN (xoxb-...)")
        if s.mode == "socket" and not app:
            missing.append("SLACK_APP_TOKEN (xapp-..., for Socket Mode; or slack.mode = \"http\" "
                           "with SLACK_SIGNING_SECRET)")
        if s.mode == "http" and not secret:
            missing.append("SLACK_SIGNING_SECRET (for slack.mode = \"http\")")
        if missing:
            raise ConfigError("Slack is half configured: missing " + " and ".join(missing))
        found.append(("slack", runner("slack")))
    return found


async def in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking `fn` on a daemon thread: a stop during a long model load need not wait
    for it (asyncio's default executor would keep the process alive until it returns)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def _done(value: Any, exc: BaseException | None) -> None:
        if not fut.done():
            fut.set_exception(exc) if exc else fut.set_result(value)

    def _run() -> None:
        try:
            value = fn(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(_done, None, exc)
        else:
            loop.call_soon_threadsafe(_done, value, None)

    threading.Thread(target=_run, name="model-load", daemon=True).start()
    return await fut


async def _keep_warming_flag(redis: Redis, keys: Keys, owner: str) -> None:
    """While the model loads, tell adapters (so they tell users) that the bot warms up."""
    while True:
        with contextlib.suppress(RedisError, OSError):
            await redis.set(keys.warming, owner, ex=WARMING_TTL_S)
        await asyncio.sleep(WARMING_TTL_S / 3)


def _import_model_code() -> None:
    """Import torch and transformers (seconds of holding Python's import lock) before the
    adapters start: during the long weights load that follows, an adapter that imports a module
    on its first request (PTB, slack-sdk do) is not blocked behind them."""
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401


async def load_engine(
    settings: Settings, redis: Redis, stop: asyncio.Event,
    watch: Collection[asyncio.Task[Any]] = (),
) -> Any:
    """(engine, tokenizer), or None when stopped (or a `watch`ed task ended) first."""
    from kullm_core.engine.loader import build_engine

    keys = Keys(settings.redis.prefix)
    owner = owner_id()
    flag = asyncio.create_task(_keep_warming_flag(redis, keys, owner), name="warming-flag")
    load = asyncio.ensure_future(in_daemon_thread(build_engine, settings))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({load, stopped, *watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        flag.cancel()
        stopped.cancel()
        with contextlib.suppress(RedisError, OSError):
            await release_owned(redis, [keys.warming], owner)
    if not load.done():
        log.info("stopped while the model was loading")
        load.add_done_callback(lambda f: f.cancelled() or f.exception())
        return None
    return load.result()


async def serve(settings: Settings, *, with_adapters: bool) -> int:
    """Run until SIGINT/SIGTERM; 0 after a clean stop, 1 if a part failed."""
    from kullm_core.ops import OpsServer, redis_ping

    plan = configured_adapters(settings) if with_adapters else []
    stop = asyncio.Event()
    stop_on_signals(stop)
    embedded: Embedded = "start" if with_adapters else "reuse_or_start"
    tasks: dict[str, asyncio.Task[Any]] = {}
    async with open_redis(settings, embedded=embedded) as redis, OpsServer(
        settings.ops, checks={"redis": redis_ping(redis)}, expect=("worker",)
    ) as ops:  # alive at once; ready once the model is loaded and the worker heartbeats
        if not settings.redis.allow_eviction:  # refuse before a long model load, not after
            await check_memory_policy(redis, False, "kullm serve")
        client = CoreClient(redis, settings)
        if plan:
            await asyncio.to_thread(_import_model_code)
        tasks.update({name: asyncio.create_task(run(settings, client, stop), name=name)
                      for name, run in plan})
        if plan:
            log.info("online: %s (users are told it warms up until the model is loaded)",
                     ", ".join(tasks))
        elif with_adapters:
            log.info("no chat platform configured (set TELEGRAM_BOT_TOKEN, or SLACK_BOT_TOKEN "
                     "with SLACK_APP_TOKEN); talk to it with `kullm chat` in another terminal")
        worker: Worker | None = None
        try:
            built = await load_engine(settings, redis, stop, watch=list(tasks.values()))
            if built is not None and not stop.is_set():
                engine, tokenizer = built
                worker = Worker(settings, redis, engine, tokenizer)
                await engine.start()
                ops.watch_worker(worker)
                tasks["worker"] = asyncio.create_task(worker.run(stop), name="worker")
                log.info("running: %s", ", ".join(
                    f"worker ({engine.name})" if n == "worker" else n for n in tasks))
            if tasks and not stop.is_set():
                await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
        finally:
            stop.set()  # adapters finish or hand back while Redis is still there
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
            if worker is not None:
                await worker.engine.stop()
    return _report(dict(zip(tasks, results, strict=True)))


def _report(results: dict[str, Any]) -> int:
    failed = {n: r for n, r in results.items() if isinstance(r, BaseException)}
    for name, exc in failed.items():  # a known error is one line; anything else its traceback
        if isinstance(exc, KullmError):
            log.error("%s stopped: %s", name, exc)
        else:
            log.error("%s stopped with an error: %s", name, exc, exc_info=exc)
    log.info("stopped%s", " with errors" if failed else " cleanly")
    return 1 if failed else 0
