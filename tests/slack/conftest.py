"""Slack fixtures: the fake Slack, settings pointing at it, and a running adapter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from bots.slack import SlackBot, SlackTuning
from kullm_core.client import CoreClient
from kullm_core.settings import Settings
from tests.fakes.slack_api import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, FakeSlack

# Short timings so tests that restart adapters or wait out leases stay quick.
TEST_TUNING = SlackTuning(shutdown_grace_s=5.0, lease_s=1.5, api_timeout_s=5.0)


def slack_settings(settings: Settings, fake: FakeSlack, **slack: Any) -> Settings:
    section = type(settings.slack)(**{
        **settings.slack.model_dump(), "bot_token": BOT_TOKEN, "app_token": APP_TOKEN,
        "signing_secret": SIGNING_SECRET, "base_url": fake.api_url, "mode": fake.mode,
        "http_port": 0, **slack,
    })
    return settings.model_copy(update={"slack": section})


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(mode="socket") as f:
        yield f


@pytest.fixture
async def http_fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(mode="http") as f:
        yield f


RunBot = Callable[..., AbstractAsyncContextManager[SlackBot]]


@pytest.fixture
def run_bot(settings: Settings, client: CoreClient) -> RunBot:
    """`async with run_bot(fake, tuning=..., **slack_settings) as bot:` runs an adapter."""

    @asynccontextmanager
    async def _run(fake: FakeSlack, tuning: SlackTuning = TEST_TUNING,
                   **slack: Any) -> AsyncIterator[SlackBot]:
        bot = SlackBot(slack_settings(settings, fake, **slack), client, tuning)
        stop = asyncio.Event()
        task = asyncio.create_task(bot.run(stop))
        ready = asyncio.create_task(bot.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=20,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()
        assert bot.ready.is_set(), "slack adapter did not start"
        if fake.mode == "http":
            fake.app_url = f"http://127.0.0.1:{bot.http_port}/slack/events"
        else:
            await fake.wait_for(fake.connected, 10, "socket mode connection")
        try:
            yield bot
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    return _run
