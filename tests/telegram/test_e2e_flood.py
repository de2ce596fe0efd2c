"""One chat flooding the bot: the real PTB client against the fake Bot API, real Redis, the
real worker. Other chats still get their answers; the flooder gets a bounded number of
refusals; a flood from someone not allowed costs no Redis work."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from telegram import Chat, Message, Update
from telegram import User as TgUser

from bots.telegram.app import ChatOrderedProcessor
from bots.telegram.texts import t
from kullm_core.client import CoreClient
from kullm_core.settings import Settings
from tests.fakes.telegram_api import BOT_ID, FakeTelegram, User
from tests.telegram.conftest import MakeBot, with_telegram
from tests.telegram.helpers import BOB, reply_texts, wait_reply

MALLORY = User(1666, "Mallory", "mallory", "en")
FLOOD = 300


def _limited(tg_settings: Settings, **limits: Any) -> Settings:
    # One refusal per chat for the whole test: the count is exact, whatever the timing.
    values = {"refusal_interval_s": 3600.0, **limits}
    return with_telegram(tg_settings, limits=tg_settings.limits.model_copy(update=values))


async def test_a_flood_from_someone_not_allowed_costs_nothing_and_others_are_answered(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient, tg_settings: Settings
) -> None:
    settings = _limited(tg_settings, allowed_users=[f"tg:{BOB.id}"])
    async with make_bot(settings=settings, core=CoreClient(client.redis, settings)):
        flood = [await tg.send_text(MALLORY.id, MALLORY, f"spam {i}") for i in range(FLOOD)]
        ask = await tg.send_text(BOB.id, BOB, "서울의 명소를 알려줘")
        _, shown = await wait_reply(tg, client, ask)
        last = await tg.send_text(MALLORY.id, MALLORY, "one more")  # processed after the flood
        marker = await tg.send_text(BOB.id, BOB, "고마워")
        await wait_reply(tg, client, marker)
    assert shown and shown[-1].text
    refusals = tg.bot_messages(MALLORY.id)
    assert [m.text for m in refusals] == [t("error.forbidden", "en")]
    assert refusals[0].reply_to == flood[0].message_id and reply_texts(tg, last) == []
    # Nothing of the flood reached Redis (no update marked seen, no job, no delivery) but
    # the send budget of the one refusal.
    assert len(await client.redis.keys("*:seen:*")) == 2  # Bob's two updates
    mallory = [k for k in await client.redis.keys("*") if str(MALLORY.id).encode() in k]
    assert mallory == [f"kullm:tg:{BOT_ID}:budget:chat:{MALLORY.id}".encode()]


async def test_an_allowed_flooder_gets_one_refusal_and_a_bystander_is_answered(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient, tg_settings: Settings
) -> None:
    settings = _limited(tg_settings, requests_per_minute=3)
    async with make_bot(settings=settings, core=CoreClient(client.redis, settings)):
        flood = [await tg.send_text(MALLORY.id, MALLORY, f"질문 {i}") for i in range(FLOOD)]
        ask = await tg.send_text(BOB.id, BOB, "부산은 어때?")
        _, shown = await wait_reply(tg, client, ask)
        for msg in flood[:3]:  # within the rate: answered
            await wait_reply(tg, client, msg)
        too_often = "You are asking too often"
        await tg.wait_for(lambda: any(m.text.startswith(too_often)
                                      for m in tg.bot_messages(MALLORY.id)))
    assert shown
    answered = [m for m in flood if reply_texts(tg, m)]
    refused = [m for m in answered if reply_texts(tg, m)[0].startswith(too_often)]
    # Three a minute (six if the test spans a minute's boundary), one refusal for the rest.
    assert len(refused) == 1 and 3 <= len(answered) - 1 <= 6


async def test_pending_questions_of_one_user_are_capped_with_one_notice(
    tg: FakeTelegram, make_bot: MakeBot, client: CoreClient, tg_settings: Settings
) -> None:
    settings = _limited(tg_settings, max_pending_per_user=2)
    # grace 0: with no worker the waiting replies cannot finish; they are handed back
    async with make_bot(settings=settings, core=CoreClient(client.redis, settings), grace_s=0):
        msgs = [await tg.send_text(MALLORY.id, MALLORY, f"q{i}") for i in range(20)]
        # No worker runs: the first two wait in line; the third is told, the rest dropped.
        await tg.wait_for(lambda: any(reply_texts(tg, m) for m in msgs[2:]))
    notices = [m for m in msgs[2:] if reply_texts(tg, m)]
    assert [reply_texts(tg, m) for m in notices] == [[t("too_many_pending", "en", pending=2)]]
    assert len(await client.redis.keys("*:reply:*")) == 2


def _update(uid: int, chat_id: int) -> Update:
    user = TgUser(chat_id, "x", is_bot=False)
    chat = Chat(chat_id, Chat.PRIVATE)
    msg = Message(uid, dt.datetime.now(dt.UTC), chat, from_user=user, text="hi")
    return Update(uid, message=msg)


async def test_a_flooding_chat_holds_one_slot_and_a_bounded_backlog() -> None:
    proc = ChatOrderedProcessor(2, backlog=10)
    release = asyncio.Event()
    ran: list[int] = []

    async def work(uid: int) -> None:
        ran.append(uid)
        if uid < 1000:
            await release.wait()

    flood = [asyncio.create_task(proc.process_update(_update(i, 7), work(i)))
             for i in range(200)]
    other = asyncio.create_task(proc.process_update(_update(1000, 8), work(1000)))
    await asyncio.wait_for(other, 10)  # done while chat 7's first update still blocks
    assert ran == [0, 1000] and proc.waiting(7) == 10 and proc.dropped == 190
    release.set()
    await asyncio.wait_for(asyncio.gather(*flood), 10)
    assert ran[1:] == [1000, *range(1, 10)] and proc.waiting(7) == 0
