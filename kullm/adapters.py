"""`kullm telegram` / `kullm slack`: one adapter alone (no worker, no torch).

For bot-only pods (e.g. webhook replicas behind a load balancer) beside workers elsewhere,
all sharing one Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from kullm.runtime import open_redis, stop_on_signals
from kullm_core.client import CoreClient
from kullm_core.embedded import running_url
from kullm_core.errors import ConfigError, PlatformError
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

        return guarded(name, run_telegram)
    from bots.slack import run_slack

    return guarded(name, run_slack)


_SLACK_AUTH = {"invalid_auth", "not_authed", "account_inactive", "token_revoked",
               "token_expired", "not_allowed_token_type"}


def platform_error(name: str, settings: Settings, exc: BaseException) -> PlatformError | None:
    """A person's one-line account of a platform that refused us or cannot be reached."""
    if name == "telegram":
        from telegram.error import Forbidden, InvalidToken, NetworkError

        where = settings.telegram.base_url.split("/bot")[0]
        if isinstance(exc, InvalidToken | Forbidden):
            return PlatformError("telegram: the Bot API rejected the token (TELEGRAM_BOT_TOKEN): "
                                 "copy it again from @BotFather")
        if isinstance(exc, NetworkError):
            return PlatformError(f"telegram: cannot reach the Bot API at {where} ({exc}); "
                                 "check the network or telegram.base_url", unreachable=True)
        return None
    import aiohttp
    from slack_sdk.errors import SlackApiError

    if isinstance(exc, SlackApiError):
        code = str((exc.response.data or {}).get("error", "")) if exc.response else ""
        if code in _SLACK_AUTH:
            return PlatformError(f"slack: the token was rejected ({code}): check SLACK_BOT_TOKEN "
                                 "(xoxb-...) and SLACK_APP_TOKEN (xapp-..., connections:write)")
        return PlatformError(f"slack: the Web API refused at start: {code or exc}")
    if isinstance(exc, aiohttp.ClientError | TimeoutError):
        return PlatformError(f"slack: cannot reach {settings.slack.base_url} ({exc}); check "
                             "the network or slack.base_url", unreachable=True)
    return None


START_TRIES = 3
"""An unreachable platform at start is tried this often (1, 2 s apart) before giving up:
a slow first answer (a busy machine loading the model) is no reason to stop."""


def guarded(name: str, run: Runner) -> Runner:
    """`run`, with a rejected token or an unreachable platform raised as one clear line."""

    async def _run(settings: Settings, client: CoreClient, stop: asyncio.Event) -> None:
        for attempt in range(1, START_TRIES + 1):
            try:
                await run(settings, client, stop)
                return
            except Exception as exc:
                known = platform_error(name, settings, exc)
                if known is None:
                    raise
                log.debug("%s failed", name, exc_info=True)
                if not known.unreachable or attempt == START_TRIES or stop.is_set():
                    raise known from None
                log.warning("%s (try %d of %d); trying again", known, attempt, START_TRIES)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0 ** (attempt - 1))

    return _run


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
