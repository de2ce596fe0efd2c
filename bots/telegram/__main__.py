"""The Telegram adapter alone (no worker, no torch): `python -m bots.telegram [--config F]`.

For bot-only pods (e.g. webhook replicas behind a load balancer) next to workers elsewhere,
all sharing one Redis. `--check` exits 0 when Redis and the Bot API answer (a probe).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from redis.exceptions import RedisError
from telegram import Bot
from telegram.error import TelegramError

from bots.telegram import run_telegram
from kullm.logs import setup_logging
from kullm.runtime import open_redis, stop_on_signals
from kullm_core.client import CoreClient
from kullm_core.embedded import running_url
from kullm_core.errors import ConfigError, KullmError
from kullm_core.settings import Settings, load_settings

log = logging.getLogger("bots.telegram")


def _need_shared_redis(settings: Settings) -> None:
    if not settings.redis.url and not running_url(Path(settings.data_dir)):
        raise ConfigError(
            "setting `redis.url` is empty: the Telegram adapter alone needs the Redis its "
            "workers use (or a running `kullm serve` on the same data_dir)"
        )


async def _serve(settings: Settings) -> int:
    _need_shared_redis(settings)
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with open_redis(settings, reuse_running=True) as redis:
        client = CoreClient(redis, settings)
        await run_telegram(settings, client, stop)
    return 0


async def _check(settings: Settings) -> int:
    _need_shared_redis(settings)
    tg = settings.telegram
    try:
        async with open_redis(settings, reuse_running=True) as redis:
            await redis.ping()
        async with Bot(tg.token.get_secret_value(), base_url=tg.base_url) as bot:
            log.info("telegram: @%s reachable", bot.username)
    except (OSError, RedisError, TelegramError) as exc:
        print(f"telegram check failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bots.telegram")
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument("--check", action="store_true", help="probe Redis and the Bot API")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        setup_logging(settings.log_level, settings.log_format)
        return asyncio.run(_check(settings) if args.check else _serve(settings))
    except KullmError as exc:
        print(f"telegram: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (OSError, RedisError, TelegramError) as exc:
        log.debug("fatal", exc_info=True)
        print(f"telegram: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
