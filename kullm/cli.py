"""`kullm`: serve | worker | chat | tiny-model | history."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from kullm.logs import setup_logging
from kullm.runtime import open_redis, stop_on_signals
from kullm_core.client import CoreClient
from kullm_core.errors import KullmError
from kullm_core.keys import Keys
from kullm_core.settings import Settings, load_settings
from kullm_core.worker import Worker

log = logging.getLogger("kullm")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kullm", description="KULLM3 for Slack and Telegram")
    p.add_argument("--config", type=Path, help="TOML settings file (see config/kullm.toml)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve", help="everything in one process (embedded Redis if no URL)")
    w = sub.add_parser("worker", help="the generation worker alone")
    w.add_argument("--check", action="store_true", help="exit 0 if a worker is healthy, else 1")
    c = sub.add_parser("chat", help="chat in the terminal through the real pipeline")
    c.add_argument("--once", metavar="TEXT", help="print one reply and exit")
    c.add_argument("--lang", default="ko", choices=["ko", "en"])
    t = sub.add_parser("tiny-model", help="build the tiny random test model offline")
    t.add_argument("dir", type=Path)
    tg = sub.add_parser("telegram", help="the Telegram adapter alone (shared Redis)")
    tg.add_argument("--check", action="store_true", help="exit 0 if Redis and the Bot API answer")
    sub.add_parser("slack", help="the Slack adapter alone (shared Redis)")
    h = sub.add_parser("history", help="print a conversation as JSON (export)")
    h.add_argument("conversation", nargs="?", help="conversation key; omit to list keys")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        setup_logging(settings.log_level, settings.log_format)
        if args.cmd == "chat" and args.once is not None and settings.log_level == "INFO":
            logging.getLogger().setLevel(logging.WARNING)
        return asyncio.run(_dispatch(args, settings))
    except KullmError as exc:
        print(f"kullm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (OSError, RuntimeError) as exc:
        log.debug("fatal", exc_info=True)
        print(f"kullm: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.cmd == "tiny-model":
        from kullm_core.tinymodel import build_tiny_model

        out = await asyncio.to_thread(build_tiny_model, args.dir)
        print(f"tiny model written to {out}")
        return 0
    if args.cmd == "worker" and args.check:
        return await _check(settings)
    if args.cmd == "history":
        return await _history(settings, args.conversation)
    if args.cmd in ("telegram", "slack"):
        from kullm import adapters

        if args.cmd == "telegram" and args.check:
            return await adapters.check_telegram(settings)
        return await adapters.serve_adapter(settings, args.cmd)
    if args.cmd == "worker":
        return await _serve(settings, adapters=False)
    if args.cmd == "serve":
        return await _serve(settings, adapters=True)
    return await _chat(settings, args.once, args.lang)


async def _check(settings: Settings) -> int:
    async with open_redis(settings, reuse_running=True) as redis, CoreClient(
        redis, settings
    ) as client:
        alive = await client.workers_alive()
    print(f"{alive} healthy worker(s)")
    return 0 if alive else 1


async def _history(settings: Settings, conversation: str | None) -> int:
    async with open_redis(settings, reuse_running=True) as redis:
        keys = Keys(settings.redis.prefix)
        if conversation is None:
            prefix = keys.conv("")
            async for k in redis.scan_iter(match=prefix + "*"):
                print((k.decode() if isinstance(k, bytes) else k)[len(prefix):])
            return 0
        async with CoreClient(redis, settings) as client:
            turns = await client.store.history_by_key(conversation)
        print(json.dumps([t.model_dump() for t in turns], ensure_ascii=False, indent=2))
    return 0


@contextlib.asynccontextmanager
async def _worker(settings: Settings, redis: Redis) -> AsyncIterator[Worker]:
    from kullm_core.engine.loader import build_engine

    engine, tokenizer = await asyncio.to_thread(build_engine, settings)
    worker = Worker(settings, redis, engine, tokenizer)
    await engine.start()
    try:
        yield worker
    finally:
        await engine.stop()


def _adapters(settings: Settings) -> list[tuple[str, Callable[..., Coroutine[Any, Any, None]]]]:
    found: list[tuple[str, Callable[..., Coroutine[Any, Any, None]]]] = []
    if settings.telegram.token.get_secret_value():
        from bots.telegram import run_telegram

        found.append(("telegram", run_telegram))
    s = settings.slack
    if s.bot_token.get_secret_value() and (
        s.app_token.get_secret_value() or s.signing_secret.get_secret_value()
    ):
        from bots.slack import run_slack

        found.append(("slack", run_slack))
    return found


async def _serve(settings: Settings, adapters: bool) -> int:
    from kullm_core import metrics

    stop = asyncio.Event()
    stop_on_signals(stop)
    metrics.serve(settings.metrics_port)
    async with open_redis(settings) as redis, _worker(settings, redis) as worker:
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(worker.run(stop), name="worker")]
        names = [f"worker ({worker.engine.name})"]
        if adapters:
            client = CoreClient(redis, settings)
            for name, run in _adapters(settings):
                tasks.append(asyncio.create_task(run(settings, client, stop), name=name))
                names.append(name)
        log.info("running: %s", ", ".join(names))
        if adapters and len(names) == 1:
            log.info("no chat platform configured (set TELEGRAM_BOT_TOKEN or SLACK_BOT_TOKEN + "
                     "SLACK_APP_TOKEN); talk to it with `kullm chat` in another terminal")
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for exc in failed:  # a known error is one line; anything else keeps its traceback
        log.error("stopped with an error: %s", exc,
                  exc_info=None if isinstance(exc, KullmError) else exc)
    return 1 if failed else 0


async def _chat(settings: Settings, once: str | None, lang: str) -> int:
    from bots.terminal import TerminalChat

    async with open_redis(settings, reuse_running=True) as redis, CoreClient(
        redis, settings
    ) as client:
        own_worker = await client.workers_alive() == 0
        stop = asyncio.Event()
        ctx = _worker(settings, redis) if own_worker else contextlib.nullcontext(None)
        async with ctx as worker:
            task = asyncio.create_task(worker.run(stop)) if worker else None
            try:
                chat = TerminalChat(client, lang)
                return await (chat.ask(once) if once is not None else chat.repl())
            finally:
                stop.set()
                if task:
                    await task


if __name__ == "__main__":
    sys.exit(main())
