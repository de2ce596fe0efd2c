"""What an operator sees on /metrics and /readyz for a real Telegram reply: the real PTB
client against the fake Bot API, real Redis, the real worker (scripted engine)."""

from __future__ import annotations

import asyncio
from typing import Any

from bots.telegram import run_telegram
from kullm_core.client import CoreClient
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.ops import OpsServer, Readiness
from kullm_core.settings import Settings
from tests.core.test_ops import get, ops_settings, samples
from tests.fakes.telegram_api import FakeTelegram
from tests.telegram.conftest import MakeBot, with_telegram
from tests.telegram.helpers import ALICE, wait_reply

TEXT = "서울은 대한민국의 수도입니다. 경복궁과 남산타워가 유명합니다. " * 4


def tg_value(s: dict[Any, float], name: str, **labels: str) -> float:
    return s.get((name, tuple(sorted({"platform": "telegram", **labels}.items()))), 0.0)


async def test_a_reply_is_counted_received_delivered_with_its_calls_429s_and_edits(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient,
    tg_settings: Settings,
) -> None:
    engine = ScriptedEngine(lambda _req: TEXT, chunk_chars=6, delay_s=0.05)
    edit_mode = with_telegram(tg_settings, telegram={"use_drafts": False})
    async with OpsServer(ops_settings(), readiness=Readiness()) as ops:
        before = samples((await get(ops, "/metrics"))[1])
        tg.forced_429[ALICE.id].append(1)  # the chat's first send is refused once
        async with make_worker(engine=engine), make_bot(settings=edit_mode):
            msg = await tg.send_text(ALICE.id, ALICE, "서울을 소개해 줘")
            _, shown = await wait_reply(tg, client, msg)
        after = samples((await get(ops, "/metrics"))[1])

    def delta(name: str, **labels: str) -> float:
        return tg_value(after, name, **labels) - tg_value(before, name, **labels)

    assert delta("kullm_adapter_messages_received_total") == 1
    assert delta("kullm_adapter_replies_delivered_total") == 1
    to_alice = [c for c in tg.calls if c.params.get("chat_id") == str(ALICE.id)]
    for method in ("sendMessage", "editMessageText", "sendChatAction"):
        made = [c for c in to_alice if c.method == method]
        assert delta("kullm_adapter_platform_calls_total", method=method) == len(made), method
    refused = [c for c in to_alice if c.error.startswith("429")]
    assert len(refused) == 1
    assert delta("kullm_adapter_platform_429_total", method=refused[0].method) == 1
    assert delta("kullm_adapter_first_text_seconds_count") == 1
    assert delta("kullm_adapter_edits_per_reply_count") == 1
    edits = sum(len(m.versions) - 1 for m in shown)
    assert edits >= 1 and delta("kullm_adapter_edits_per_reply_sum") == edits


async def test_readiness_follows_the_telegram_connection(
    tg: FakeTelegram, tg_settings: Settings, client: CoreClient
) -> None:
    stop = asyncio.Event()
    async with OpsServer(ops_settings(), expect=("telegram",)) as ops:
        assert await get(ops, "/readyz") == (503, "not ready: telegram (starting)\n")
        task = asyncio.create_task(run_telegram(tg_settings, client, stop))
        try:  # polling runs (PTB marks it running before its first getUpdates)
            await tg.wait_for(lambda: any(c.method == "getUpdates" for c in tg.calls), 30)
            assert await get(ops, "/readyz") == (200, "ready\n")
        finally:
            stop.set()
            await task
        assert await get(ops, "/readyz") == (503, "not ready: telegram (starting)\n")
