"""Fixtures for the Telegram adapter: the fake Bot API server, settings pointing at it, and
a factory that runs the real adapter (python-telegram-bot) against it.

Limits are scaled down (the fake enforces the same numbers) so tests run in seconds; the
real numbers are exercised by `bench/telegram_bench.py`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from pydantic import SecretStr

from bots.telegram import TelegramBot, Tuning
from kullm_core.client import CoreClient
from kullm_core.replies import DeliveryTuning
from kullm_core.scopes import TelegramScopes
from kullm_core.settings import Settings
from tests.fakes.telegram_api import TOKEN, FakeLimits, FakeTelegram

# PTB 22 warns (an error under our warning filters) each time it builds a RetryAfter unless
# opted in to its future `timedelta` retry_after; the adapter reads both forms.
os.environ.setdefault("PTB_TIMEDELTA", "1")

FAST = dict(chat_interval_s=0.25, group_limit=8, group_period_s=4.0, global_limit=30,
            global_period_s=1.0)
LIMITS = TelegramScopes(**FAST)  # type: ignore[arg-type]
TUNING = Tuning(poll_timeout_s=1.0, typing_every_s=0.5, delivery=DeliveryTuning(
    placeholder_delay_s=0.6, tick_s=0.05, busy_retry_s=0.3, busy_give_up_s=30.0, lease_s=1.0,
    renew_every_s=0.2, rescan_every_s=0.3, state_check_s=1.0, idle_timeout_s=60.0,
    grace_s=5.0, redis_retry_max_s=0.2,
))

MakeBot = Callable[..., AbstractAsyncContextManager[TelegramBot]]


def with_telegram(settings: Settings, **values: Any) -> Settings:
    """A copy of `settings` with telegram (and other top-level) fields replaced."""
    tg = settings.telegram.model_copy(update=values.pop("telegram", {}))
    return settings.model_copy(update={"telegram": tg, **values})


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(FakeLimits(**FAST)) as fake:  # type: ignore[arg-type]
        yield fake


@pytest.fixture
def tg_settings(settings: Settings, tg: FakeTelegram) -> Settings:
    return with_telegram(settings, telegram={
        "token": SecretStr(TOKEN), "base_url": tg.base_url, "base_file_url": tg.base_url,
    })


@pytest.fixture
def make_bot(tg_settings: Settings, client: CoreClient) -> MakeBot:
    """`async with make_bot(settings=..., tuning=...) as bot:` runs the adapter."""

    @asynccontextmanager
    async def _make(
        settings: Settings | None = None, tuning: Tuning = TUNING, grace_s: float = 5.0,
        core: CoreClient | None = None,
    ) -> AsyncIterator[TelegramBot]:
        bot = TelegramBot(settings or tg_settings, core or client, scopes=LIMITS, tuning=tuning)
        await bot.start()
        try:
            yield bot
        finally:
            await bot.stop(grace_s)

    return _make
