"""Two replicas of the same Telegram bot under load against the limit-enforcing fake.

How two replicas share the work: Telegram lets only one consumer call `getUpdates`, so
replicas run in webhook mode behind one endpoint, as a deployment would (a load balancer or
a Kubernetes Service in front of the pods). Both register the same webhook URL; the
balancer here sends each update to the next replica in turn. Whichever replica gets an
update claims its reply in the core's shared registry (`kullm_core.replies`) and delivers
it; both replicas draw every send from the one per-bot budget in Redis, so together they
stay inside Telegram's per-chat, per-group and global limits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from kullm_core.client import CoreClient
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.settings import Settings
from tests.fakes.telegram_api import FakeTelegram, Msg, User
from tests.telegram.conftest import TUNING, MakeBot, with_telegram
from tests.telegram.helpers import (
    ALICE,
    BOB,
    CAROL,
    expected_texts,
    free_port,
    reply_texts,
    wait_reply,
)

SECRET = "replica-secret"
GROUPS = (-100701, -100702, -100703)
DM_USERS = [User(2100 + i, f"DM{i}", f"dm{i}", "ko") for i in range(6)]


@asynccontextmanager
async def balancer(backends: list[str]) -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A round-robin HTTP balancer on 127.0.0.1 in front of `backends` (webhook URLs).
    Yields its URL and how many updates each backend was sent."""
    turn = itertools.cycle(backends)
    sent = dict.fromkeys(backends, 0)
    http = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.Response:
        target = next(turn)
        sent[target] += 1
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "x-telegram-bot-api-secret-token")}
        async with http.post(target, data=await request.read(), headers=headers) as resp:
            return web.Response(status=resp.status, body=await resp.read())

    app = web.Application()
    app.router.add_post("/telegram/hook", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/telegram/hook", sent
    finally:
        await runner.cleanup()
        await http.close()


def replica(settings: Settings, public_url: str, port: int) -> Settings:
    """A replica listening on its own port, registered under the shared public URL."""
    return with_telegram(settings, telegram={
        "mode": "webhook", "webhook_url": public_url, "webhook_listen": "127.0.0.1",
        "webhook_port": port, "webhook_secret": SecretStr(SECRET),
    })


STEADY = dataclasses.replace(TUNING, delivery=dataclasses.replace(TUNING.delivery, lease_s=10.0))
"""Leases that do not lapse on a loaded machine: a lapsed one hands its reply to the other
replica (shown once: test_e2e_delivery) and counts it as delivered by both."""


def engine() -> ScriptedEngine:
    """Answers of about 360 characters in parts of 24 (the test settings allow 24 tokens),
    so every reply streams through several drafts or edits."""
    return ScriptedEngine(
        lambda r: f"{r.messages[-1]['content']}에 대한 **답**입니다. 여러 번 나뉘어 옵니다. " * 6,
        chunk_chars=24, delay_s=0.03)


async def test_two_webhook_replicas_share_the_limits_and_answer_every_question_once(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient,
    tg_settings: Settings
) -> None:
    ports = [free_port(), free_port()]
    hooks = [f"http://127.0.0.1:{p}/telegram/hook" for p in ports]
    async with balancer(hooks) as (public, sent), make_worker(engine=engine()), \
            make_bot(settings=replica(tg_settings, public, ports[0]), tuning=STEADY) as a, \
            make_bot(settings=replica(tg_settings, public, ports[1]), tuning=STEADY) as b:
        assert tg.webhook == {"url": public, "secret_token": SECRET}
        asks: list[Msg] = []
        for group in GROUPS:
            for i, user in enumerate((ALICE, BOB, CAROL, ALICE)):
                question = f"그룹 {group} 질문 {i} ({user.first_name})"
                asks.append(await tg.mention(group, user, question))
        for user in DM_USERS:
            asks.append(await tg.send_text(user.id, user, f"DM 질문 {user.first_name}"))
        # The balancer hands updates over one by one: follow a job once a replica took it
        # (its reply, or the first part of it, is on screen).
        await tg.wait_for(lambda: all(reply_texts(tg, m) for m in asks), 120)
        results = await asyncio.gather(*(wait_reply(tg, client, m, within=120) for m in asks))
    # Counted once each run has ended (stopping lets the last ones finish).
    delivered = (a.deliveries.delivered, b.deliveries.delivered)
    for ask, (done, shown) in zip(asks, results, strict=True):
        want = expected_texts(done, ask.sender.language_code)
        assert [m.text for m in shown] == want, "every answer complete"
        assert reply_texts(tg, ask) == want and len(shown) == len(want), "and shown once"
        assert all(m.entities for m in shown), "formatted"
    assert not tg.violations, "no call inside a window Telegram had not opened"
    assert all(sent[h] > 0 for h in hooks) and all(delivered), "both replicas took part"
    assert sum(delivered) == len(asks)
