"""`kullm telegram` / `kullm slack`: one adapter alone (no worker, no torch).

For bot-only pods (e.g. webhook replicas behind a load balancer) beside workers elsewhere,
all sharing one Redis.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from kullm.runtime import open_redis, stop_on_signals
from kullm_core.client import CoreClient
from kullm_core.embedded import running_url
from kullm_core.errors import ConfigError
from kullm_core.ops import OpsServer, redis_ping
from kullm_core.settings import Settings

log = logging.getLogger(__name__)

Runner = Callable[[Settings, CoreClient, asyncio.Event], Coroutine[Any, Any, None]]


def _need_shared_redis(settings: Settings, name: str) -> None:
    if not settings.redis.url and not running_url(Path(settings.data_dir)):
        raise ConfigError(
            f"setting `redis.url` is empty: the {name} adapter alone needs the Redis its "
            "workers use (or a running `kullm serve` on the same data_dir)"
        )


def runner(name: str) -> Runner:
    if name == "telegram":
        from bots.telegram import run_telegram

        return run_telegram
    from bots.slack import run_slack

    return run_slack


async def serve_adapter(settings: Settings, name: str) -> int:
    _need_shared_redis(settings, name)
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with open_redis(settings, embedded="reuse") as redis, OpsServer(
        settings.ops, checks={"redis": redis_ping(redis)}, expect=(name,)
    ):
        client = CoreClient(redis, settings)
        log.info("running: %s adapter", name)
        await runner(name)(settings, client, stop)
    return 0


async def check_telegram(settings: Settings) -> int:
    """Probe: exit 0 when Redis and the Bot API answer."""
    from telegram import Bot
    from telegram.error import TelegramError

    _need_shared_redis(settings, "telegram")
    tg = settings.telegram
    try:
        async with open_redis(settings, embedded="reuse") as redis:
            await redis.ping()
        async with Bot(tg.token.get_secret_value(), base_url=tg.base_url) as bot:
            log.info("telegram: @%s reachable", bot.username)
    except (OSError, RedisError, TelegramError) as exc:
        print(f"telegram check failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
