"""Private chats end to end: the real PTB client against the fake Bot API, real Redis, the
real worker (the tiny model, or a scripted engine where the text must be chosen)."""

from __future__ import annotations

from typing import Any

from bots.telegram.texts import t
from kullm_core.client import CoreClient
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.settings import Settings
from kullm_core.wire import ConversationRef
from tests.fakes.telegram_api import FakeTelegram, User
from tests.telegram.conftest import MakeBot, with_telegram
from tests.telegram.helpers import (
    ALICE,
    BOB,
    done_of,
    expected_texts,
    reply_texts,
    wait_reply,
)

DM_CONV = ConversationRef(platform="telegram", chat=str(ALICE.id), user=str(ALICE.id))
LONG_KO = "대한민국의 수도는 서울입니다. 서울에는 경복궁과 남산타워가 있습니다. " * 6


def scripted(text: str = LONG_KO, delay_s: float = 0.02, chunk: int = 3) -> ScriptedEngine:
    return ScriptedEngine(lambda _req: text, chunk_chars=chunk, delay_s=delay_s)


async def test_dm_conversation_over_several_turns_keeps_its_history(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient
) -> None:
    questions = ["고려대학교에 대해 알려줘", "거기는 어디에 있어?", "고마워!"]
    async with make_bot():
        answers = []
        for q in questions:
            msg = await tg.send_text(ALICE.id, ALICE, q)
            done, shown = await wait_reply(tg, client, msg)
            assert [m.text for m in shown] == expected_texts(done)
            assert shown[0].reply_to == msg.message_id
            answers.append(done.text)
    history = await client.history(DM_CONV)
    assert [(h.user, h.assistant) for h in history] == list(zip(questions, answers, strict=True))
    assert all(h.user_id == str(ALICE.id) for h in history)


async def test_dm_streams_as_native_drafts_then_sends_one_message(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    async with make_worker(engine=scripted(delay_s=0.08)), make_bot():
        msg = await tg.send_text(ALICE.id, ALICE, "서울을 소개해 줘")
        done, shown = await wait_reply(tg, client, msg)
    assert len(shown) == 1 and shown[0].versions == [shown[0].text]  # sent once, never edited
    drafts = [texts for (chat, _), texts in tg.drafts.items() if chat == ALICE.id]
    assert len(drafts) == 1 and len(drafts[0]) >= 2
    for earlier, later in zip(drafts[0], drafts[0][1:], strict=False):
        assert done.text.startswith(later) and later.startswith(earlier)  # text only grows
    methods = [c.method for c in tg.calls if c.params.get("chat_id") == str(ALICE.id)]
    assert "editMessageText" not in methods
    first_text = min(c.at for c in tg.calls if c.method == "sendMessageDraft")
    typing = [at for chat, action, at in tg.actions if chat == ALICE.id and action == "typing"]
    assert typing and typing[0] < first_text
    assert sum(1 for at in typing if at > first_text) <= 1  # stops once text shows
    assert not tg.violations


async def test_refused_drafts_fall_back_to_a_message_edited_as_it_grows(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    tg.drafts_supported = False
    async with make_worker(engine=scripted(delay_s=0.08)), make_bot():
        msg = await tg.send_text(ALICE.id, ALICE, "서울을 소개해 줘")
        done, shown = await wait_reply(tg, client, msg)
    (reply,) = shown
    assert len(reply.versions) >= 3  # sent early, edited while growing, then finished
    for version in reply.versions[:-1]:
        assert done.text.startswith(version)
    assert not tg.violations


async def test_a_second_message_while_streaming_waits_and_says_so(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    async with make_worker(engine=scripted(delay_s=0.03)), make_bot():
        first = await tg.send_text(ALICE.id, ALICE, "첫 번째 질문")
        await tg.wait_for(lambda: any(tg.drafts.values()))
        second = await tg.send_text(ALICE.id, ALICE, "두 번째 질문")
        await wait_reply(tg, client, first)
        _, shown = await wait_reply(tg, client, second)
    assert shown[0].versions[0] == t("queued_behind", "ko")
    history = await client.history(DM_CONV)
    assert [h.user for h in history] == ["첫 번째 질문", "두 번째 질문"]


async def test_start_help_and_the_command_menu_in_korean_and_english(
    tg: FakeTelegram, make_bot: MakeBot
) -> None:
    async with make_bot():
        start = await tg.command(ALICE.id, ALICE, "/start")
        help_ = await tg.command(BOB.id, BOB, "/help")
        await tg.wait_for(lambda: reply_texts(tg, start) and reply_texts(tg, help_))
    assert reply_texts(tg, start) == [t("start", "ko")]
    assert "환각" in reply_texts(tg, start)[0]
    assert reply_texts(tg, help_)[0].startswith(t("help", "en"))
    ko = {c["command"]: c["description"] for c in tg.commands[""]}
    en = {c["command"]: c["description"] for c in tg.commands["en"]}
    assert set(ko) == set(en) == {"start", "help", "ask", "reset", "stop", "retry", "forget",
                                "human", "resolve", "usage"}
    assert ko["reset"] == "새 대화 시작" and en["reset"] == "Start a new conversation"


async def test_stickers_and_photos_get_a_text_only_answer_and_edits_are_ignored(
    tg: FakeTelegram, make_bot: MakeBot, client: CoreClient
) -> None:
    async with make_bot():
        sticker = await tg.send_sticker(ALICE.id, ALICE)
        photo = await tg.send_photo(BOB.id, BOB, caption="이 사진 뭐야?")
        edited = await tg.user_message(ALICE.id, ALICE, "고친 메시지", kind="edited_message")
        robot = User(999, "Other", "other_bot", is_bot=True)
        from_bot = await tg.send_text(robot.id, robot, "안녕 봇")
        marker = await tg.command(ALICE.id, ALICE, "/help")
        await tg.wait_for(lambda: reply_texts(tg, sticker) and reply_texts(tg, photo)
                          and reply_texts(tg, marker))
    assert reply_texts(tg, sticker) == [t("text_only", "ko")]
    assert reply_texts(tg, photo) == [t("text_only", "en")]
    assert reply_texts(tg, edited) == [] and reply_texts(tg, from_bot) == []
    assert tg.bot_messages(robot.id) == []
    assert await client.redis.keys("*:reply:*") == []  # no job was made for any of them


async def test_an_unlisted_user_is_refused_politely_and_no_job_is_made(
    tg: FakeTelegram, make_bot: MakeBot, client: CoreClient, tg_settings: Settings
) -> None:
    limits = tg_settings.limits.model_copy(update={"allowed_users": ["tg:@alice"]})
    settings = with_telegram(tg_settings, limits=limits)
    async with make_bot(settings=settings, core=CoreClient(client.redis, settings)):
        msg = await tg.send_text(BOB.id, BOB, "hello?")
        await tg.wait_for(lambda: reply_texts(tg, msg))
    assert reply_texts(tg, msg) == [t("error.forbidden", "en")]
    assert await client.redis.keys("*:reply:*") == []
    assert await client.redis.keys("*:dedupe:*") == []


async def test_messages_sent_in_a_burst_are_answered_in_order(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    async with make_worker(engine=ScriptedEngine(lambda r: f"답: {r.messages[-1]['content']}")), \
            make_bot():
        msgs = [await tg.send_text(ALICE.id, ALICE, f"질문 {i}") for i in range(4)]
        for msg in msgs:
            _, shown = await wait_reply(tg, client, msg)
            assert [m.text for m in shown] == [f"답: {msg.text}"]
    assert [h.user for h in await client.history(DM_CONV)] == [m.text for m in msgs]


async def test_a_group_not_on_the_chat_allowlist_is_refused(
    tg: FakeTelegram, make_bot: MakeBot, client: CoreClient, tg_settings: Settings
) -> None:
    limits = tg_settings.limits.model_copy(update={"allowed_chats": ["tg:-100777"]})
    settings = with_telegram(tg_settings, limits=limits)
    async with make_bot(settings=settings, core=CoreClient(client.redis, settings)):
        msg = await tg.mention(-100888, ALICE, "여기서도 돼?")
        await tg.wait_for(lambda: reply_texts(tg, msg))
    assert reply_texts(tg, msg) == [t("error.forbidden", "ko")]
    assert await client.redis.keys("*:reply:*") == []


async def test_a_user_over_the_rate_limit_is_told_when_to_ask_again(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient, tg_settings: Settings
) -> None:
    limits = tg_settings.limits.model_copy(update={"requests_per_minute": 1})
    settings = with_telegram(tg_settings, limits=limits)
    async with make_bot(settings=settings, core=CoreClient(client.redis, settings)):
        first = await tg.send_text(ALICE.id, ALICE, "첫 질문")
        await wait_reply(tg, client, first)
        second = await tg.send_text(ALICE.id, ALICE, "또 질문")
        await tg.wait_for(lambda: reply_texts(tg, second))
    (text,) = reply_texts(tg, second)
    assert text.startswith("요청이 너무 잦습니다.") and "초 후에 다시" in text


async def test_a_user_past_the_daily_quota_is_told_when_it_resets(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient, tg_settings: Settings
) -> None:
    limits = tg_settings.limits.model_copy(update={"daily_tokens": 10})
    settings = with_telegram(tg_settings, limits=limits)
    async with make_bot(settings=settings, core=CoreClient(client.redis, settings)):
        first = await tg.send_text(BOB.id, BOB, "first question")
        done, _ = await wait_reply(tg, client, first)
        assert done.completion_tokens >= 10
        second = await tg.send_text(BOB.id, BOB, "another one")
        await tg.wait_for(lambda: reply_texts(tg, second))
    (text,) = reply_texts(tg, second)
    assert text.startswith("You have used today's quota (10 tokens).") and "(midnight UTC)" in text


async def test_a_duplicate_update_gets_one_reply(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient
) -> None:
    async with make_bot():
        msg = await tg.send_text(ALICE.id, ALICE, "한 번만 답해 줘")
        done, shown = await wait_reply(tg, client, msg)
        await tg.redeliver(msg.update_id)
        marker = await tg.command(ALICE.id, ALICE, "/help")  # handled after the duplicate
        await tg.wait_for(lambda: reply_texts(tg, marker))
    assert [m.message_id for m in tg.replies_to(ALICE.id, msg.message_id)] == [
        m.message_id for m in shown
    ]
    sends = [c for c in tg.calls if c.method == "sendMessage"
             and (c.params.get("reply_parameters") or {}).get("message_id") == msg.message_id]
    assert len(sends) == 1
    assert [h.assistant for h in await client.history(DM_CONV)] == [done.text]


async def test_an_empty_reply_and_a_finished_one_are_never_blank(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    async with make_worker(engine=scripted(text="   ")), make_bot():
        msg = await tg.send_text(ALICE.id, ALICE, "아무 말도 하지 마")
        done = await done_of(client, msg)
        await tg.wait_for(lambda: reply_texts(tg, msg) == expected_texts(done))
    assert reply_texts(tg, msg) == ["(빈 답변)"]
