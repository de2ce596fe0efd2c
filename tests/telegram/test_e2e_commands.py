"""/reset, /stop, /retry and /forget end to end."""

from __future__ import annotations

import itertools
from typing import Any

from bots.telegram.texts import t
from kullm_core.client import CoreClient
from kullm_core.engine.base import GenerationRequest
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.wire import ConversationRef
from tests.fakes.telegram_api import FakeTelegram
from tests.telegram.conftest import MakeBot
from tests.telegram.helpers import (
    ALICE,
    BOB,
    GROUP,
    done_of,
    expected_texts,
    reply_texts,
    wait_reply,
)

DM = ConversationRef(platform="telegram", chat=str(ALICE.id), user=str(ALICE.id))


def roles(request: GenerationRequest) -> list[str]:
    """The conversation's turns the model was given (a system message, where
    `generation.system_prompt_mode` adds one, is the prompt builder's business)."""
    return [m["role"] for m in request.messages if m["role"] != "system"]


async def test_reset_starts_a_new_conversation(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    engine = ScriptedEngine(lambda r: "네, 기억했습니다.")
    async with make_worker(engine=engine), make_bot():
        first = await tg.send_text(ALICE.id, ALICE, "내 이름은 앨리스야")
        await wait_reply(tg, client, first)
        second = await tg.send_text(ALICE.id, ALICE, "내 이름이 뭐지?")
        await wait_reply(tg, client, second)
        reset = await tg.command(ALICE.id, ALICE, "/reset")
        await tg.wait_for(lambda: reply_texts(tg, reset))
        assert await client.history(DM) == []
        third = await tg.send_text(ALICE.id, ALICE, "내 이름이 뭐지?")
        await wait_reply(tg, client, third)
    assert reply_texts(tg, reset) == [t("reset", "ko")]
    assert roles(engine.requests[1]) == ["user", "assistant", "user"]
    assert roles(engine.requests[2]) == ["user"]  # the history was gone
    assert [h.user for h in await client.history(DM)] == ["내 이름이 뭐지?"]


async def test_stop_mid_stream_keeps_the_partial_text_marked(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    full = "천천히 길게 답하는 중입니다. " * 10
    engine = ScriptedEngine(lambda r: full, chunk_chars=3, delay_s=0.08)
    async with make_worker(engine=engine), make_bot():
        msg = await tg.send_text(ALICE.id, ALICE, "길게 설명해 줘")
        await tg.wait_for(lambda: any(tg.drafts.values()))
        await tg.command(ALICE.id, ALICE, "/stop")
        done = await done_of(client, msg)
        await tg.wait_for(lambda: reply_texts(tg, msg) == expected_texts(done))
    assert done.finish_reason == "cancelled"
    assert done.text and full.startswith(done.text) and len(done.text) < len(full)
    (shown,) = reply_texts(tg, msg)
    assert shown.endswith("\n\n" + t("stopped", "ko"))
    assert [h.assistant for h in await client.history(DM)] == [done.text]


async def test_stop_while_the_question_waits_in_line_stops_it(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    async with make_bot():
        msg = await tg.send_text(ALICE.id, ALICE, "줄 서 있는 질문")  # no worker yet
        await tg.wait_for(lambda: reply_texts(tg, msg) == [t("queued", "ko", position=1)])
        stop = await tg.command(ALICE.id, ALICE, "/stop")
        async with make_worker():
            done = await done_of(client, msg)
            await tg.wait_for(lambda: reply_texts(tg, msg) == expected_texts(done))
    assert done.finish_reason == "cancelled" and not done.text
    assert reply_texts(tg, msg) == [t("stopped", "ko")]
    assert reply_texts(tg, stop) == []  # not "nothing to stop"
    assert await client.history(DM) == []


async def test_stop_with_nothing_running_says_so(tg: FakeTelegram, make_bot: MakeBot) -> None:
    async with make_bot():
        stop = await tg.command(BOB.id, BOB, "/stop")
        await tg.wait_for(lambda: reply_texts(tg, stop))
    assert reply_texts(tg, stop) == [t("nothing_to_stop", "en")]


async def test_retry_regenerates_the_last_answer_in_place_of_the_old_one(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    counter = itertools.count(1)
    engine = ScriptedEngine(lambda r: f"답변 {next(counter)}번입니다.")
    async with make_worker(engine=engine), make_bot():
        nothing = await tg.command(ALICE.id, ALICE, "/retry")
        await tg.wait_for(lambda: reply_texts(tg, nothing))
        msg = await tg.send_text(ALICE.id, ALICE, "아무 답이나 해 줘")
        await wait_reply(tg, client, msg)
        retry = await tg.command(ALICE.id, ALICE, "/retry")
        _done, shown = await wait_reply(tg, client, retry)
    assert reply_texts(tg, nothing) == [t("nothing_to_retry", "ko")]
    assert reply_texts(tg, msg) == ["답변 1번입니다."]
    assert [m.text for m in shown] == ["답변 2번입니다."]
    history = await client.history(DM)
    assert [(h.user, h.assistant) for h in history] == [("아무 답이나 해 줘", "답변 2번입니다.")]
    assert roles(engine.requests[1]) == ["user"]  # not shown its own old answer


async def test_retry_while_an_answer_streams_is_refused(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    engine = ScriptedEngine(lambda r: "느린 답변입니다. " * 5, chunk_chars=2, delay_s=0.05)
    async with make_worker(engine=engine), make_bot():
        msg = await tg.send_text(ALICE.id, ALICE, "질문")
        await tg.wait_for(lambda: any(tg.drafts.values()))
        retry = await tg.command(ALICE.id, ALICE, "/retry")
        await tg.wait_for(lambda: reply_texts(tg, retry))
        await wait_reply(tg, client, msg)
    assert reply_texts(tg, retry) == [t("retry_busy", "ko")]


async def test_forget_asks_first_and_only_the_asker_can_confirm(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient
) -> None:
    group_conv = ConversationRef(platform="telegram", chat=str(GROUP), user=str(ALICE.id))
    async with make_bot():
        await wait_reply(tg, client, await tg.send_text(ALICE.id, ALICE, "개인 질문"))
        await wait_reply(tg, client, await tg.mention(GROUP, ALICE, "그룹 질문"))
        ask = await tg.command(ALICE.id, ALICE, "/forget")
        await tg.wait_for(lambda: reply_texts(tg, ask))
        (confirm,) = tg.replies_to(ALICE.id, ask.message_id)
        buttons = confirm.reply_markup["inline_keyboard"][0]  # type: ignore[index]
        assert [b["text"] for b in buttons] == [t("forget_yes", "ko"), t("forget_no", "ko")]
        await tg.press_button(confirm, BOB, buttons[0]["callback_data"])
        await tg.wait_for(lambda: len(tg.answered_callbacks) == 1)
        assert len(await client.history(DM)) == 1  # Bob cannot erase Alice's data
        await tg.press_button(confirm, ALICE, buttons[0]["callback_data"])
        await tg.wait_for(lambda: confirm.text == t("forgot", "ko", turns=2))
    assert tg.answered_callbacks[0]["text"] == t("forget_not_yours", "en")
    assert await client.history(DM) == [] and await client.history(group_conv) == []
    assert confirm.reply_markup is None  # the buttons are gone


async def test_forget_can_be_cancelled(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient
) -> None:
    async with make_bot():
        await wait_reply(tg, client, await tg.send_text(ALICE.id, ALICE, "기억해 줘"))
        ask = await tg.command(ALICE.id, ALICE, "/forget")
        await tg.wait_for(lambda: reply_texts(tg, ask))
        (confirm,) = tg.replies_to(ALICE.id, ask.message_id)
        no = confirm.reply_markup["inline_keyboard"][0][1]  # type: ignore[index]
        await tg.press_button(confirm, ALICE, no["callback_data"])
        await tg.wait_for(lambda: confirm.text == t("forget_cancelled", "ko"))
    assert len(await client.history(DM)) == 1
