"""What an operator sees on /metrics and /readyz for a real Slack reply: the real Bolt and
slack-sdk clients against the fake Slack, real Redis, the real worker."""

from __future__ import annotations

import asyncio
from typing import Any

from bots.slack import SlackBot, run_slack
from kullm_core.client import CoreClient
from kullm_core.ops import READINESS, OpsServer, Readiness
from kullm_core.settings import Settings
from tests.core.test_ops import get, ops_settings, samples
from tests.fakes.slack_api import FakeSlack
from tests.slack.conftest import TEST_TUNING, slack_settings
from tests.slack.helpers import answered


def slack_value(s: dict[Any, float], name: str, **labels: str) -> float:
    return s.get((name, tuple(sorted({"platform": "slack", **labels}.items()))), 0.0)


async def test_a_reply_is_counted_with_its_calls_429s_and_edits(
    fake: FakeSlack, run_bot: Any, client: CoreClient, worker: Any
) -> None:
    fake.fail("chat.update", times=1, retry_after=1)
    async with OpsServer(ops_settings(), readiness=Readiness()) as ops:
        before = samples((await get(ops, "/metrics"))[1])
        async with run_bot(fake, native_streaming=False):
            msg = await fake.user_message("업데이트가 한 번 거절되는 질문")
            await answered(fake, client, msg)
        after = samples((await get(ops, "/metrics"))[1])

    def delta(name: str, **labels: str) -> float:
        return slack_value(after, name, **labels) - slack_value(before, name, **labels)

    assert delta("kullm_adapter_messages_received_total") == 1
    assert delta("kullm_adapter_replies_delivered_total") == 1
    for method in ("chat.postMessage", "chat.update"):
        assert delta("kullm_adapter_platform_calls_total", method=method) == fake.calls_of(method)
    assert delta("kullm_adapter_platform_429_total", method="chat.update") == 1
    assert delta("kullm_adapter_first_text_seconds_count") == 1
    assert delta("kullm_adapter_edits_per_reply_count") == 1
    updates_shown = fake.calls_of("chat.update") - 1  # the refused one showed nothing
    assert updates_shown >= 1
    assert delta("kullm_adapter_edits_per_reply_sum") == updates_shown


async def test_readiness_follows_the_socket_mode_connection(
    fake: FakeSlack, settings: Settings, client: CoreClient
) -> None:
    bot = SlackBot(slack_settings(settings, fake), client, TEST_TUNING)
    stop = asyncio.Event()
    async with OpsServer(ops_settings(), checks={"slack": bot.connected},
                         readiness=Readiness()) as ops:
        assert await get(ops, "/readyz") == (503, "not ready: slack (not connected)\n")
        task = asyncio.create_task(bot.run(stop))
        try:
            await asyncio.wait_for(bot.ready.wait(), 20)
            assert await get(ops, "/readyz") == (200, "ready\n")
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        assert await get(ops, "/readyz") == (503, "not ready: slack (not connected)\n")


async def test_run_slack_registers_its_readiness_check_while_it_runs(
    fake: FakeSlack, settings: Settings, client: CoreClient
) -> None:
    stop = asyncio.Event()
    async with OpsServer(ops_settings(), expect=("slack",)) as ops:
        assert await get(ops, "/readyz") == (503, "not ready: slack (starting)\n")
        task = asyncio.create_task(
            run_slack(slack_settings(settings, fake), client, stop, tuning=TEST_TUNING))
        try:
            await fake.wait_for(fake.connected, 20, "socket mode connection")
            assert "slack" in READINESS.names()
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        assert await get(ops, "/readyz") == (503, "not ready: slack (starting)\n")
