"""The outbound scheduler against the limit-enforcing fake Bot API, with the real PTB `Bot`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from telegram import Bot

from bots.telegram.outbox import Outbox, OutboxOp, SendResult
from kullm_core.budget import SendBudget
from kullm_core.keys import Keys
from tests.fakes.telegram_api import TOKEN, FakeTelegram
from tests.telegram.conftest import LIMITS
from tests.telegram.helpers import GROUP

DM = 2001


@pytest.fixture
async def bot(tg: FakeTelegram) -> AsyncIterator[Bot]:
    tg.chat(DM)
    tg.chat(GROUP)
    tg.chat(GROUP - 1)
    async with Bot(TOKEN, base_url=tg.base_url) as b:
        yield b


def outbox_of(bot: Bot, redis: Redis) -> Outbox:
    return Outbox(bot, SendBudget(redis, Keys("kullm"), "tg:test"), LIMITS)


@pytest.fixture
async def outbox(bot: Bot, redis: Redis) -> AsyncIterator[Outbox]:
    box = outbox_of(bot, redis)
    yield box
    await box.stop(5)


def send(chat: int, text: str, must: bool = True) -> OutboxOp:
    async def call(bot: Bot) -> Any:
        return await bot.send_message(chat, text)

    return OutboxOp(chat, call, "sendMessage", must=must)


def edit(chat: int, mid: int, text: str, must: bool = False) -> OutboxOp:
    async def call(bot: Bot) -> Any:
        return await bot.edit_message_text(text, chat_id=chat, message_id=mid)

    return OutboxOp(chat, call, "editMessageText", key=f"m{mid}", fingerprint=text, must=must)


async def test_pending_edits_of_one_message_merge_into_the_newest(
    tg: FakeTelegram, outbox: Outbox
) -> None:
    first = await outbox.run(send(DM, "1"))
    mid = first.value.message_id
    texts = [" ".join(str(i) for i in range(n)) for n in range(2, 40)]
    futures = [outbox.submit(edit(DM, mid, text)) for text in texts]
    await asyncio.gather(*futures)
    (msg,) = tg.bot_messages(DM)
    assert msg.text == texts[-1]
    # While the chat's interval ran, every queued edit merged into the newest one.
    assert msg.versions == ["1", texts[-1]]
    assert outbox.stats["merged"] == len(texts) - 1
    assert not tg.violations


async def test_an_edit_to_the_text_already_shown_is_not_sent(
    tg: FakeTelegram, outbox: Outbox
) -> None:
    mid = (await outbox.run(send(DM, "hello"))).value.message_id
    assert (await outbox.run(edit(DM, mid, "world"))).ok
    again = await outbox.run(edit(DM, mid, "world"))
    assert again.ok and again.skipped
    assert [c.method for c in tg.calls if c.method != "getMe"] == ["sendMessage", "editMessageText"]


async def test_many_chats_at_once_stay_within_every_limit(
    tg: FakeTelegram, outbox: Outbox
) -> None:
    chats = [3000 + i for i in range(40)] + [GROUP, GROUP - 1]
    for chat in chats:
        tg.chat(chat)
    ops = [outbox.submit(send(chat, f"{chat}-{n}")) for n in range(3) for chat in chats]
    results = await asyncio.gather(*ops)
    assert all(r.ok for r in results)
    assert not tg.violations
    for chat in chats:  # in order within each chat
        assert [m.text for m in tg.bot_messages(chat)] == [f"{chat}-{n}" for n in range(3)]


async def test_a_group_budget_is_shared_by_concurrent_replies(
    tg: FakeTelegram, outbox: Outbox
) -> None:
    a = (await outbox.run(send(GROUP, "a"))).value.message_id
    b = (await outbox.run(send(GROUP, "b"))).value.message_id
    pending: list[asyncio.Future[SendResult]] = []
    for n in range(1, 60):
        pending.append(outbox.submit(edit(GROUP, a, "a" * n)))
        pending.append(outbox.submit(edit(GROUP, b, "b" * n)))
        await asyncio.sleep(0.02)
    await asyncio.gather(*pending)
    await outbox.run(edit(GROUP, a, "a final", must=True))
    await outbox.run(edit(GROUP, b, "b final", must=True))
    assert [m.text for m in tg.bot_messages(GROUP)] == ["a final", "b final"]
    assert not tg.violations
    calls = tg.counted_calls(GROUP)
    stamps = [c.at for c in calls]
    period = LIMITS.group_period_s
    assert max(sum(1 for t in stamps if s <= t < s + period) for s in stamps) <= LIMITS.group_limit


async def test_two_processes_share_one_group_budget(
    tg: FakeTelegram, bot: Bot, redis: Redis
) -> None:
    boxes = [outbox_of(bot, redis), outbox_of(bot, redis)]
    results = await asyncio.gather(*(
        box.submit(send(GROUP, f"{n}")) for n in range(6) for box in boxes
    ))
    assert all(r.ok for r in results) and len(tg.bot_messages(GROUP)) == 12
    assert not tg.violations
    for box in boxes:
        await box.stop(1)


async def test_first_text_then_final_text_go_before_interim_updates(
    tg: FakeTelegram, outbox: Outbox
) -> None:
    a = (await outbox.run(send(GROUP, "a"))).value.message_id
    b = (await outbox.run(send(GROUP, "b"))).value.message_id
    interim = outbox.submit(edit(GROUP, a, "a interim"))
    final = outbox.submit(OutboxOp(GROUP, edit(GROUP, b, "b final").call, "edit", must=True,
                             priority=1))
    first = outbox.submit(OutboxOp(GROUP, send(GROUP, "c first").call, "send", priority=0))
    await asyncio.gather(interim, final, first)
    shown = [c.params["text"] for c in tg.calls if c.method in ("editMessageText", "sendMessage")]
    assert shown[2:] == ["c first", "b final", "a interim"]


async def test_flood_control_pauses_the_chat_and_keeps_the_final_text(
    tg: FakeTelegram, outbox: Outbox
) -> None:
    mid = (await outbox.run(send(DM, "start"))).value.message_id
    tg.forced_429[DM].extend([1, 1])
    final = await outbox.run(edit(DM, mid, "final answer", must=True))
    assert final.ok
    assert tg.bot_messages(DM)[0].text == "final answer"
    assert outbox.stats["retry_after"] == 2
    assert not tg.violations  # nothing was sent into the chat before retry_after passed


async def test_network_errors_on_final_text_are_retried(
    tg: FakeTelegram, outbox: Outbox
) -> None:
    tg.gateway_errors = 2
    result = await outbox.run(send(DM, "must arrive"))
    assert result.ok
    assert [m.text for m in tg.bot_messages(DM)] == ["must arrive"]


async def test_interim_text_that_fails_is_dropped_not_retried(
    tg: FakeTelegram, outbox: Outbox
) -> None:
    tg.gateway_errors = 1
    result = await outbox.run(send(DM, "interim", must=False))
    assert not result.ok
    assert tg.bot_messages(DM) == []


async def test_refusals_come_back_as_outcomes(tg: FakeTelegram, outbox: Outbox) -> None:
    too_long = await outbox.run(send(DM, "가" * 4097))
    assert not too_long.ok and too_long.refused("message is too long")
    missing = await outbox.run(edit(DM, 999, "x", must=True))
    assert missing.refused("message to edit not found")
