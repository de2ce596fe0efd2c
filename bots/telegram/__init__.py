"""Telegram adapter: KULLM3 in private chats and groups, streamed under Telegram's limits.

`kullm serve` calls `run_telegram`; tests and the benchmark use `TelegramBot` directly.
"""

from __future__ import annotations

import asyncio

from bots.telegram.app import TelegramBot
from bots.telegram.tuning import Tuning
from kullm_core.client import CoreClient
from kullm_core.ops import READINESS
from kullm_core.settings import Settings

__all__ = ["TelegramBot", "Tuning", "run_telegram"]


async def run_telegram(settings: Settings, client: CoreClient, stop: asyncio.Event) -> None:
    """Serve Telegram (polling or webhook, per `telegram.mode`) until `stop` is set, then
    let replies in progress finish within `queue.shutdown_grace_s` and shut down."""
    bot = TelegramBot(settings, client)
    with READINESS.registered("telegram", lambda: _connected(bot)):
        async with bot:
            await stop.wait()


async def _connected(bot: TelegramBot) -> object:
    """Ready once getMe answered and polling (or the webhook server) runs."""
    updater = bot.app.updater
    return (bot.app.running and updater is not None and updater.running) or "not connected"

