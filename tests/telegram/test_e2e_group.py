"""Groups end to end: mentions, replies to the bot, /ask, topics, scopes, a shared budget."""

from __future__ import annotations

from typing import Any

from bots.telegram.texts import t
from kullm_core.client import CoreClient
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.settings import Settings
from kullm_core.wire import ConversationRef
from tests.fakes.telegram_api import BOT_USERNAME, FakeTelegram
from tests.telegram.conftest import LIMITS, MakeBot, with_telegram
from tests.telegram.helpers import ALICE, BOB, CAROL, GROUP, expected_texts, reply_texts, wait_reply


def conv(user: int | None, thread: int | None = None) -> ConversationRef:
    return ConversationRef(platform="telegram", chat=str(GROUP), thread=str(thread or ""),
                           user=str(user) if user else "")


async def test_a_mention_and_a_reply_to_the_bot_continue_one_conversation(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient
) -> None:
    async with make_bot():
        chatter = await tg.send_text(GROUP, BOB, "점심 뭐 먹지?")
        ask = await tg.mention(GROUP, ALICE, "서울 맛집 추천해 줘")
        done1, shown1 = await wait_reply(tg, client, ask)
        follow = await tg.send_text(GROUP, ALICE, "더 알려줘", reply_to=shown1[-1].message_id)
        done2, shown2 = await wait_reply(tg, client, follow)
    assert reply_texts(tg, chatter) == []
    assert shown1[0].reply_to == ask.message_id and shown2[0].reply_to == follow.message_id
    history = await client.history(conv(ALICE.id))
    assert [(h.user, h.assistant) for h in history] == [
        ("서울 맛집 추천해 줘", done1.text), ("더 알려줘", done2.text)]
    assert not tg.drafts  # groups stream by editing a message
    assert not tg.violations


async def test_ask_command_and_an_empty_mention(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient
) -> None:
    async with make_bot():
        ask = await tg.command(GROUP, CAROL, "/ask 부산은 어때?")
        _done, _ = await wait_reply(tg, client, ask)
        empty = await tg.mention(GROUP, CAROL, "   ")
        bare = await tg.command(GROUP, BOB, "/ask")
        await tg.wait_for(lambda: reply_texts(tg, empty) and reply_texts(tg, bare))
    assert [h.user for h in await client.history(conv(CAROL.id))] == ["부산은 어때?"]
    assert reply_texts(tg, empty) == [t("empty_mention", "ko")]
    assert reply_texts(tg, bare) == [t("ask_usage", "en")]


async def test_forum_topics_get_threaded_replies_and_their_own_conversation(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient
) -> None:
    tg.chat(GROUP, "supergroup", "forum", forum=True)
    async with make_bot():
        msg = await tg.mention(GROUP, ALICE, "토픽 안의 질문", thread_id=77)
        _, shown = await wait_reply(tg, client, msg)
    assert {m.thread_id for m in shown} == {77}
    assert len(await client.history(conv(ALICE.id, thread=77))) == 1
    assert await client.history(conv(ALICE.id)) == []


async def test_group_scope_shares_one_conversation_between_members(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient, tg_settings: Settings
) -> None:
    async with make_bot(settings=with_telegram(tg_settings, telegram={"group_scope": "group"})):
        first = await tg.mention(GROUP, ALICE, "오늘 회의 주제는 예산입니다")
        await wait_reply(tg, client, first)
        second = await tg.mention(GROUP, BOB, "회의 주제가 뭐였지?")
        await wait_reply(tg, client, second)
    history = await client.history(conv(None))
    assert [(h.user_id, h.user) for h in history] == [
        (str(ALICE.id), "오늘 회의 주제는 예산입니다"), (str(BOB.id), "회의 주제가 뭐였지?")]


async def test_concurrent_replies_in_one_group_share_its_budget(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    text = "그룹 답변입니다. 여러 사람이 동시에 물어도 한도를 넘지 않습니다. " * 8
    engine = ScriptedEngine(lambda _r: text, chunk_chars=4, delay_s=0.02)
    async with make_worker(engine=engine), make_bot():
        asks = [await tg.mention(GROUP, user, f"{user.first_name}의 질문") for user in
                (ALICE, BOB, CAROL)]
        for ask in asks:
            done, shown = await wait_reply(tg, client, ask)
            assert [m.text for m in shown] == expected_texts(done, ask.sender.language_code)
    assert not tg.violations
    stamps = [c.at for c in tg.counted_calls(GROUP)]
    window = LIMITS.group_period_s
    assert max(sum(1 for x in stamps if s <= x < s + window) for s in stamps) <= LIMITS.group_limit


async def test_non_text_in_a_group_is_answered_only_when_meant_for_the_bot(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient
) -> None:
    async with make_bot():
        ask = await tg.mention(GROUP, ALICE, "안녕")
        _, shown = await wait_reply(tg, client, ask)
        stray = await tg.send_sticker(GROUP, BOB)
        aimed = await tg.send_sticker(GROUP, ALICE, reply_to=shown[0].message_id)
        await tg.wait_for(lambda: reply_texts(tg, aimed))
    assert reply_texts(tg, aimed) == [t("text_only", "ko")]
    assert reply_texts(tg, stray) == []


async def test_pasted_code_in_a_group_reaches_the_model_with_its_whitespace(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    yaml = "이 설정 봐줘:\n```yaml\nserver:\n  port:    8080\n\thosts:\n    - a   b\n```"
    code = "이 코드  왜 느려?\n    for i in range(10):\n\t\tprint(i,   i)"
    engine = ScriptedEngine(lambda _r: "확인했습니다.", chunk_chars=4)
    async with make_worker(engine=engine), make_bot():
        first = await tg.mention(GROUP, ALICE, yaml)
        await wait_reply(tg, client, first)
        # The mention in the middle of the first line, as Telegram marks it.
        handle = f"@{BOT_USERNAME}"
        text = code.replace("  왜", f"  {handle} 왜", 1)
        entity = {"type": "mention", "offset": text.index(handle), "length": len(handle)}
        second = await tg.send_text(GROUP, ALICE, text, entities=[entity])
        await wait_reply(tg, client, second)
    assert [h.user for h in await client.history(conv(ALICE.id))] == [yaml, code]
    assert [r.messages[-1]["content"] for r in engine.requests] == [yaml, code]
