"""Webhook mode: Telegram pushes updates; the secret token is checked; replicas behind a load
balancer answer each update once."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from kullm_core.client import CoreClient
from kullm_core.settings import Settings
from tests.fakes.telegram_api import FakeTelegram
from tests.telegram.conftest import MakeBot, with_telegram
from tests.telegram.helpers import ALICE, BOB, free_port, reply_texts, wait_reply

SECRET = "webhook-secret-123"


def webhook_settings(settings: Settings) -> tuple[Settings, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram/hook"
    return with_telegram(settings, telegram={
        "mode": "webhook", "webhook_url": url, "webhook_listen": "127.0.0.1",
        "webhook_port": port, "webhook_secret": SecretStr(SECRET),
    }), url


async def test_webhook_mode_answers_and_refuses_a_wrong_or_missing_secret(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient, tg_settings: Settings
) -> None:
    settings, url = webhook_settings(tg_settings)
    async with make_bot(settings=settings):
        assert tg.webhook == {"url": url, "secret_token": SECRET}
        msg = await tg.send_text(ALICE.id, ALICE, "웹훅으로 물어봅니다")
        await wait_reply(tg, client, msg)
        forged, update = tg.forge_update(BOB.id, BOB, "forged question")
        assert await tg.post_to_webhook(update, "wrong-secret", url) == 403
        assert await tg.post_to_webhook(update, None, url) == 403
        marker = await tg.command(BOB.id, BOB, "/help")
        await tg.wait_for(lambda: reply_texts(tg, marker))
    assert reply_texts(tg, forged) == []
    assert len(await client.redis.keys("*:reply:*")) == 1  # only Alice's question
    calls = [c.method for c in tg.calls]
    assert "getUpdates" not in calls and "setWebhook" in calls


async def test_replicas_behind_a_load_balancer_answer_a_redelivered_update_once(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient, tg_settings: Settings
) -> None:
    first, first_url = webhook_settings(tg_settings)
    second, second_url = webhook_settings(tg_settings)
    async with make_bot(settings=first), make_bot(settings=second):
        msg = await tg.send_text(ALICE.id, ALICE, "한 번만 답해 주세요")
        _, shown = await wait_reply(tg, client, msg)
        update = tg.update_of(msg)
        # Telegram retries (or the balancer duplicates) the update to both replicas.
        assert await tg.post_to_webhook(update, SECRET, first_url) == 200
        assert await tg.post_to_webhook(update, SECRET, second_url) == 200
        marker = await tg.command(ALICE.id, ALICE, "/help")
        await tg.wait_for(lambda: reply_texts(tg, marker))
    assert [m.message_id for m in tg.replies_to(ALICE.id, msg.message_id)] == [
        m.message_id for m in shown]
    assert len(await client.redis.keys("*:reply:*")) == 1
