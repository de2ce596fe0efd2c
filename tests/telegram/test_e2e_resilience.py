"""Outages around a reply, end to end: the real PTB client against the fake Bot API, real
Redis, the real worker. The adapter down for longer than the reply stream lives, and the
embedded Valkey killed mid-reply: either way the user gets the whole answer, once."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bots.telegram.texts import t
from kullm_core.client import CoreClient
from kullm_core.embedded import EmbeddedRedis
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.settings import Settings
from kullm_core.worker import Worker
from tests.fakes.telegram_api import FakeTelegram
from tests.telegram.conftest import MakeBot, with_telegram
from tests.telegram.helpers import (
    ALICE,
    BOB,
    GROUP,
    done_of,
    expected_texts,
    job_of,
    reply_texts,
    wait_reply,
)

TEXT = "끊겨도 끝까지 한 번만 전달되는 답변입니다. " * 10


def engine(delay_s: float) -> ScriptedEngine:
    return ScriptedEngine(lambda _r: TEXT, chunk_chars=6, delay_s=delay_s)


def sends_into(tg: FakeTelegram, chat: int) -> int:
    return sum(1 for c in tg.calls if c.method == "sendMessage"
               and int(c.params["chat_id"]) == chat and not c.error)


async def test_an_adapter_down_longer_than_the_reply_stream_lives_still_answers_once(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    async with make_bot(grace_s=0):  # no worker yet: both questions wait in line
        dm = await tg.send_text(ALICE.id, ALICE, "끊겨도 답해 줘")
        group = await tg.mention(GROUP, BOB, "answer me even so")
        await tg.wait_for(lambda: bool(reply_texts(tg, dm) and reply_texts(tg, group)))
    asks = (dm, group)
    placeholders = [tg.replies_to(m.chat.id, m.message_id)[0].message_id for m in asks]
    async with make_worker(engine=engine(delay_s=0.01)):  # answered while no adapter runs
        done = [await done_of(client, m) for m in asks]
    for msg in asks:  # the adapter stayed down longer than the reply streams lived
        assert await client.redis.delete(client.keys.reply(job_of(msg))) == 1
    want = [expected_texts(d, m.sender.language_code) for d, m in zip(done, asks, strict=True)]
    async with make_bot() as back:
        await tg.wait_for(lambda: [reply_texts(tg, m) for m in asks] == want)
        assert back.deliveries.adopted == 2
    for msg, placeholder in zip(asks, placeholders, strict=True):
        # The placeholder became the answer: one message, sent once.
        assert [m.message_id for m in tg.replies_to(msg.chat.id, msg.message_id)] == [
            placeholder]
        assert sends_into(tg, msg.chat.id) == 1
    assert not tg.violations


@asynccontextmanager
async def _own_valkey(tmp_path: Path, tg_settings: Settings) -> AsyncIterator[
        tuple[EmbeddedRedis, Settings, Redis]]:
    async with EmbeddedRedis(tmp_path / "state") as server:
        s = with_telegram(tg_settings, redis=tg_settings.redis.model_copy(
            update={"url": server.url}))
        r = Redis.from_url(server.url)
        try:
            yield server, s, r
        finally:
            await r.aclose()


@asynccontextmanager
async def _worker(s: Settings, r: Redis, tokenizer: Any) -> AsyncIterator[Worker]:
    eng = engine(delay_s=0.08)
    await eng.start()
    w = Worker(s, r, eng, tokenizer)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        yield w
    finally:
        stop.set()
        await task
        await eng.stop()


@pytest.mark.slow
async def test_the_embedded_valkey_killed_mid_reply_still_gives_the_whole_answer(
    tg: FakeTelegram, make_bot: MakeBot, tg_settings: Settings, tiny_tokenizer: Any,
    tmp_path: Path,
) -> None:
    async with _own_valkey(tmp_path, tg_settings) as (server, s, r), CoreClient(r, s) as core, \
            _worker(s, r, tiny_tokenizer), make_bot(settings=s, core=core):
        dm = await tg.send_text(ALICE.id, ALICE, "서버가 죽어도 답해 줘")
        group = await tg.mention(GROUP, BOB, "answer even if Redis dies")
        await tg.wait_for(lambda: any(tg.drafts.values()) and bool(reply_texts(tg, group)))
        os.kill(server.server_pid, signal.SIGKILL)
        assert await asyncio.to_thread(server.wait_restarted, 1, 30)
        for msg in (dm, group):
            done, shown = await wait_reply(tg, core, msg)  # the whole answer, as stored
            assert len(done.text) > 100 and TEXT.startswith(done.text)
            assert len(shown) == 1
    failures = {t("error.internal", "ko"), t("error.internal", "en")}
    seen = [v for chat in (ALICE.id, GROUP) for m in tg.bot_messages(chat) for v in m.versions]
    assert not failures & set(seen) and not any(f in v for f in failures for v in seen)
    assert not tg.violations
