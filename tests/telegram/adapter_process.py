"""Run the Telegram adapter alone in a process (for the crash test): settings come from the
environment (`KULLM_*`, `TELEGRAM_BOT_TOKEN`) exactly as in production."""

from __future__ import annotations

import asyncio
import logging
import signal

from redis.asyncio import Redis

from bots.telegram import run_telegram
from kullm_core.client import CoreClient
from kullm_core.settings import load_settings


async def _main() -> None:
    settings = load_settings()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    redis = Redis.from_url(settings.redis.url)
    async with CoreClient(redis, settings) as client:
        await run_telegram(settings, client, stop)
    await redis.aclose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_main())
