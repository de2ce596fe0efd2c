"""`kullm`: serve | worker | chat | telegram | slack | tiny-model | history | eval."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import gc
import json
import logging
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from redis.exceptions import RedisError

from kullm import helpdesk_cli
from kullm.eval import cli as eval_cli
from kullm.logs import setup_logging
from kullm.runtime import open_redis
from kullm_core.client import CoreClient
from kullm_core.errors import KullmError, RedisUnavailable
from kullm_core.keys import Keys
from kullm_core.redis_text import as_str
from kullm_core.settings import Settings, load_settings

log = logging.getLogger("kullm")

_SETTINGS_HELP = ("Settings: config/kullm.toml documents every one; environment variables "
                  "KULLM_<SECTION>__<FIELD> and a .env file in the working directory override "
                  "the file.")


def _version() -> str:
    try:
        return version("kullm-chat")
    except PackageNotFoundError:
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: `--config` before the subcommand is not overwritten by the subcommand's default.
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="TOML settings file (see config/kullm.toml)")
    p = argparse.ArgumentParser(prog="kullm", description="KULLM3 for Slack and Telegram",
                                epilog=_SETTINGS_HELP, parents=[common])
    p.add_argument("--version", action="version", version=f"kullm-chat {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=description, epilog=_SETTINGS_HELP,
                              parents=[common])

    add("serve", "everything in one process (embedded Redis if no URL)",
        "Run the worker and every configured chat adapter; with redis.url empty, also an "
        "embedded Valkey server (data in <data_dir>/redis), stopped last. Ctrl-C or SIGTERM: "
        "replies in flight finish or are handed back, then exit 0.")
    w = add("worker", "the generation worker alone",
            "Run the generation worker alone (several workers may share one Redis). With "
            "redis.url empty it joins the embedded server of a running `kullm serve`.")
    w.add_argument("--check", action="store_true",
                   help="probe only: exit 0 if a worker heartbeat is fresh, else 1")
    c = add("chat", "chat in the terminal through the real pipeline",
            "Chat in the terminal through the real queue, worker and store. Joins a running "
            "`kullm serve` (same data_dir or redis.url), or starts its own server and worker.")
    c.add_argument("--once", metavar="TEXT", help="print one reply to TEXT and exit")
    c.add_argument("--lang", default="ko", choices=["ko", "en"],
                   help="language of the bot's own messages (default: ko)")
    t = add("tiny-model", "build the tiny random test model offline",
            "Build the tiny random-weight KULLM3-shaped model (for tests and trying it out).")
    t.add_argument("dir", type=Path, help="output folder")
    tg = add("telegram", "the Telegram adapter alone (shared Redis)",
             "Run the Telegram adapter alone (no worker, no torch) against the Redis its "
             "workers use.")
    tg.add_argument("--check", action="store_true",
                    help="probe only: exit 0 if Redis and the Bot API answer")
    add("slack", "the Slack adapter alone (shared Redis)",
        "Run the Slack adapter alone (no worker, no torch) against the Redis its workers use.")
    h = add("history", "list conversations, or print one as JSON",
            "List stored conversation keys, or print one conversation as JSON (export).")
    h.add_argument("conversation", nargs="?", help="conversation key; omit to list keys")
    helpdesk_cli.add_parsers(add)
    eval_cli.add_arguments(add("eval", "answer quality as KULLM3's authors measured it",
                               eval_cli.DESCRIPTION))
    return p


def main(argv: list[str] | None = None) -> int:
    # At exit, spare the collector its passes over every object torch and transformers
    # made (over a second after the last log line); the process's memory goes anyway.
    atexit.unregister(gc.freeze)  # once, however often main runs in one process
    atexit.register(gc.freeze)
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(getattr(args, "config", None))
        setup_logging(settings.log_level, settings.log_format)
        quiet = args.cmd == "eval" or (args.cmd == "chat" and args.once is not None)
        if quiet and settings.log_level == "INFO":
            logging.getLogger().setLevel(logging.WARNING)
        return asyncio.run(_dispatch(args, settings))
    except KullmError as exc:
        print(f"kullm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except RedisError as exc:  # lost for good while a command that cannot wait was running
        log.debug("redis", exc_info=True)
        print(f"kullm: error: lost the connection to Redis ({exc})", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:
        log.debug("fatal", exc_info=True)
        print(f"kullm: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from kullm import serve

    if args.cmd == "tiny-model":
        from kullm_core.tinymodel import build_tiny_model

        out = await asyncio.to_thread(build_tiny_model, args.dir)
        print(f"tiny model written to {out}")
        return 0
    if args.cmd == "worker" and args.check:
        return await _check(settings)
    if args.cmd == "history":
        return await _history(settings, args.conversation)
    if args.cmd == "eval":
        return await eval_cli.main(args, settings, getattr(args, "config", None))
    if args.cmd in helpdesk_cli.COMMANDS:
        return await helpdesk_cli.run(args, settings)
    if args.cmd in ("telegram", "slack"):
        from kullm import adapters

        if args.cmd == "telegram" and args.check:
            return await adapters.check_telegram(settings)
        return await adapters.serve_adapter(settings, args.cmd)
    if args.cmd in ("worker", "serve"):
        return await serve.serve(settings, with_adapters=args.cmd == "serve")
    return await _chat(settings, args.once, args.lang)


async def _check(settings: Settings) -> int:
    """A probe: never starts a server of its own. 0 healthy, 1 not (Redis down included)."""
    try:
        async with open_redis(settings, embedded="reuse") as redis, CoreClient(
            redis, settings
        ) as client:
            alive = await client.workers_alive()
    except (RedisUnavailable, RedisError, OSError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(f"{alive} healthy worker(s)")
    return 0 if alive else 1


async def _history(settings: Settings, conversation: str | None) -> int:
    async with open_redis(settings) as redis:
        keys = Keys(settings.redis.prefix)
        if conversation is None:
            prefix = keys.conv("")
            async for k in redis.scan_iter(match=prefix + "*"):
                print(as_str(k)[len(prefix):])
            return 0
        async with CoreClient(redis, settings) as client:
            turns = await client.store.history_by_key(conversation)
        print(json.dumps([t.model_dump() for t in turns], ensure_ascii=False, indent=2))
    return 0


async def _chat(settings: Settings, once: str | None, lang: str) -> int:
    from bots.terminal import TerminalChat
    from kullm.serve import load_engine
    from kullm_core.worker import Worker

    async with open_redis(settings) as redis, CoreClient(redis, settings) as client:
        stop = asyncio.Event()
        task: asyncio.Task[None] | None = None
        engine = None
        if await client.workers_alive() == 0:
            built = await load_engine(settings, redis, stop)
            if built is None:
                return 130
            engine, tokenizer = built
            await engine.start()
            task = asyncio.create_task(Worker(settings, redis, engine, tokenizer).run(stop))
        try:
            chat = TerminalChat(client, lang)
            return await (chat.ask(once) if once is not None else chat.repl())
        finally:
            stop.set()
            if task:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if engine is not None:
                await engine.stop()


if __name__ == "__main__":
    sys.exit(main())
