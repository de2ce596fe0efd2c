"""End to end, the helpdesk in Telegram groups: `/human` forwards a hand-off into the helpdesk
group's forum topic and the bot stays silent until a responder resolves; `/resolve` where no
helpdesk group is set; per-chat modes set by an admin; the reply chain as context (and
/forget removing the cached messages). Real PTB against the fake Bot API (which, like a bot
with privacy mode off, delivers every group message), real Redis, real worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bots.telegram.texts import t
from kullm_core.client import CoreClient
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.helpdesk.stats import StatsReader, days_back
from kullm_core.settings import Settings
from kullm_core.wire import ConversationRef, Escalation
from tests.conftest import test_settings_for
from tests.fakes.telegram_api import FakeTelegram, Msg, User
from tests.fakes.telegram_markup import buttons
from tests.telegram.conftest import MakeBot
from tests.telegram.helpers import ALICE, BOB, CAROL, GROUP, job_of, reply_texts, wait_reply

ADMIN = User(1009, "Admin", "admin", "en")
RESPONDER = User(1010, "Rita", "rita", "ko")
DESK, TOPIC = -100777, 5
OTHER = -100600
"""A group without a helpdesk group: hand-offs are posted in it."""


@pytest.fixture
def settings(redis_url: str, tiny_model_dir: Path, tmp_path: Path) -> Settings:
    return test_settings_for(
        redis_url, tiny_model_dir, tmp_path, limits={"admins": [f"tg:{ADMIN.id}"]},
        helpdesk={"responders": [str(RESPONDER.id)], "channels": {f"tg:{GROUP}": {
            "handoff_chat": str(DESK), "handoff_thread": str(TOPIC)}}})


def conv(chat: int, user: User) -> ConversationRef:
    return ConversationRef(platform="telegram", chat=str(chat), user=str(user.id))


async def said(tg: FakeTelegram, msg: Msg) -> str:
    await tg.wait_for(lambda: reply_texts(tg, msg))
    return reply_texts(tg, msg)[0]


async def toast(tg: FakeTelegram, query: str) -> str:
    await tg.wait_for(lambda: tg.toast(query) is not None)
    return str((tg.toast(query) or {}).get("text") or "")


async def test_human_hands_off_to_the_helpdesk_topic_until_a_responder_resolves(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    tg.chat(DESK, "supergroup", "helpdesk", forum=True)
    engine = ScriptedEngine(lambda _r: "프린터 드라이버를 다시 설치해 보세요.")
    async with make_worker(engine=engine), make_bot():
        first = await tg.mention(GROUP, ALICE, "3층 프린터가 안 돼요")
        _, shown = await wait_reply(tg, client, first)
        assert [b for b, _ in buttons(shown[-1].reply_markup)] == [
            "👍", "👎", t("hd.human", "ko")]
        human = await tg.command(GROUP, ALICE, "/human")
        told = await said(tg, human)
        await tg.wait_for(lambda: bool(tg.bot_messages(DESK)))
        [handoff] = tg.bot_messages(DESK)
        silent = await tg.mention(GROUP, ALICE, "아직도 안 돼요")
        await tg.send_text(GROUP, RESPONDER, "전원을 껐다 켜 보세요", reply_to=silent.message_id)
        await said(tg, await tg.command(GROUP, ALICE, "/usage"))  # the group's updates so far
        assert reply_texts(tg, silent) == []
        not_yours = await toast(tg, await tg.press(handoff, BOB, t("hd.resolve", "ko")))
        resolved = await toast(tg, await tg.press(handoff, RESPONDER, t("hd.resolve", "ko")))
        await tg.wait_for(lambda: resolved in [m.text for m in tg.bot_messages(GROUP)])
        await tg.wait_for(lambda: handoff.reply_markup is None)
        again = await tg.mention(GROUP, ALICE, "다시 확인해 주세요")
        await wait_reply(tg, client, again)
    esc_id = Escalation.id_for(conv(GROUP, ALICE))
    assert told == t("hd.called", "ko")
    assert handoff.thread_id == TOPIC
    assert "3층 프린터가 안 돼요" in handoff.text and "Alice (@alice)" in handoff.text
    assert f"https://t.me/c/500/{human.message_id}" in handoff.text
    tags = [e for e in handoff.formats[0] if e["type"] == "text_link"]
    assert [e["url"] for e in tags] == [f"tg://user?id={RESPONDER.id}"]
    units = handoff.versions[0].encode("utf-16-le")
    tagged = units[2 * tags[0]["offset"]:2 * (tags[0]["offset"] + tags[0]["length"])]
    assert tagged.decode("utf-16-le") == t("hd_responder", "ko")
    assert not_yours == t("hd.not_responder", "en")
    assert resolved == t("hd.resolved", "ko", name="rita")
    assert handoff.text.endswith("\n" + resolved)
    esc = await client.helpdesk.escalation_by_id(esc_id)
    assert esc is not None and esc.state == "resolved" and esc.resolver == f"tg:{RESPONDER.id}"
    assert esc.first_human_at > 0, "the responder's reply in the group was timed"
    assert [h.user for h in await client.history(conv(GROUP, ALICE))] == [
        "3층 프린터가 안 돼요", "다시 확인해 주세요"]
    assert len(engine.requests) == 2
    [row] = await StatsReader(client.redis, client.keys).rows(days_back(1), f"tg:{GROUP}")
    assert (row.counts["escalations"], row.counts["resolved"]) == (1, 1)
    assert not tg.violations


async def test_the_hand_off_button_and_resolve_in_a_group_without_a_helpdesk_group(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    engine = ScriptedEngine(lambda _r: "네트워크 설정을 확인하세요.")
    async with make_worker(engine=engine), make_bot():
        first = await tg.mention(OTHER, BOB, "VPN이 안 돼요")
        _, shown = await wait_reply(tg, client, first)
        pressed = await toast(tg, await tg.press(shown[-1], BOB, t("hd.human", "en")))
        await tg.wait_for(lambda: len(tg.bot_messages(OTHER)) >= 3)
        again = await toast(tg, await tg.press(shown[-1], BOB, t("hd.human", "en")))
        refused = await said(tg, await tg.command(OTHER, CAROL, "/resolve"))
        done = await tg.command(OTHER, ADMIN, "/resolve")
        await tg.wait_for(lambda: t("hd.resolved", "en", name="admin") in [
            m.text for m in tg.bot_messages(OTHER)])
    handoff = next(m for m in tg.bot_messages(OTHER) if m.text.startswith("🙋 Bob"))
    assert pressed == t("hd.called", "en") and again == t("hd.already_open", "en")
    assert handoff.reply_to == shown[-1].message_id and handoff.reply_markup is None
    assert "VPN이 안 돼요" in handoff.text
    assert f"https://t.me/c/600/{shown[-1].message_id}" in handoff.text
    assert refused == t("hd.not_responder", "ko")
    assert reply_texts(tg, done) == [], "resolved where it was asked: the chat was told once"
    esc = await client.helpdesk.escalation(conv(OTHER, BOB))
    assert esc is not None and esc.state == "resolved" and esc.job_id == job_of(first)


async def test_an_admin_sets_mode_all_then_off(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    engine = ScriptedEngine(lambda _r: "재부팅해 보세요.")
    async with make_worker(engine=engine), make_bot():
        refused = await said(tg, await tg.command(GROUP, BOB, "/mode all"))
        mode_all = await said(tg, await tg.command(GROUP, ADMIN, "/mode all"))
        question = await tg.send_text(GROUP, ALICE, "VPN이 안 되는데 어떻게 하나요?")
        await wait_reply(tg, client, question)
        between = await tg.send_text(GROUP, BOB, "저도 그래요", reply_to=question.message_id)
        mode_off = await said(tg, await tg.command(GROUP, ADMIN, "/mode off"))
        ignored = await tg.mention(GROUP, CAROL, "안녕?")
        await said(tg, await tg.command(GROUP, ADMIN, "/mode reset"))
    assert refused == t("hd.admins_only", "en")
    assert "mode=all" in mode_all and mode_all.startswith(t("hd.mode_set", "en", config=""))
    assert "handoff=" + str(DESK) + "/" + str(TOPIC) in mode_all
    assert "mode=off" in mode_off
    assert reply_texts(tg, between) == [] and reply_texts(tg, ignored) == []
    assert len(engine.requests) == 1
    cfg = await client.redis.get(client.keys.channel_config(f"tg:{GROUP}"))
    assert cfg is None, "reset: back to the settings"


async def test_a_reply_chain_is_context_and_forget_removes_its_cached_messages(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    engine = ScriptedEngine(lambda _r: "3시입니다.")
    async with make_worker(engine=engine), make_bot():
        agenda = await tg.send_text(GROUP, ALICE, "다음 회의 안건은 예산입니다")
        time_ = await tg.send_text(GROUP, BOB, "회의는 3시에 시작합니다",
                                   reply_to=agenda.message_id)
        ask = await tg.mention(GROUP, CAROL, "회의가 몇 시라고 했죠?", reply_to=time_.message_id)
        await wait_reply(tg, client, ask)
        forget = await tg.command(GROUP, ALICE, "/forget")
        await tg.wait_for(lambda: tg.replies_to(GROUP, forget.message_id))
        [confirm] = tg.replies_to(GROUP, forget.message_id)
        await toast(tg, await tg.press_button(confirm, ALICE, f"forget:yes:{ALICE.id}"))
        await tg.wait_for(lambda: confirm.text.startswith("🗑"))
        later = await tg.mention(GROUP, CAROL, "안건은 뭐였죠?", reply_to=time_.message_id)
        await wait_reply(tg, client, later)
    # Quoted messages go into the prompt in time order, before the message that followed them.
    first, second = ("\n".join(m["content"] for m in r.messages) for r in engine.requests)
    assert "다음 회의 안건은 예산입니다" in first and "회의는 3시에 시작합니다" in first
    assert first.index("예산입니다") < first.index("3시에 시작") < first.index("몇 시라고")
    assert "alice:" in first and "bob:" in first and "carol:" in first
    assert "예산입니다" not in second, "Alice's cached message went with /forget"
    assert "회의는 3시에 시작합니다" in second, "Telegram still shows the replied-to message"
    assert [h.user for h in await client.history(conv(GROUP, CAROL))] == [
        "회의가 몇 시라고 했죠?", "안건은 뭐였죠?"]


async def test_in_a_group_the_comment_is_the_raters_reply_to_the_prompt(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    engine = ScriptedEngine(lambda _r: "재부팅해 보세요.")
    async with make_worker(engine=engine), make_bot():
        ask = await tg.mention(GROUP, ALICE, "노트북이 느려요")
        _, shown = await wait_reply(tg, client, ask)
        await toast(tg, await tg.press(shown[-1], BOB, "👎"))
        await tg.wait_for(lambda: bool(tg.replies_to(GROUP, shown[-1].message_id)))
        [prompt] = tg.replies_to(GROUP, shown[-1].message_id)
        comment = await tg.send_text(GROUP, BOB, "원인을 알려 주세요", reply_to=prompt.message_id)
        saved = await said(tg, comment)
    assert prompt.text == "Bob, " + t("hd.comment_prompt", "en")
    assert prompt.reply_markup == {"force_reply": True, "selective": True}
    assert [e["type"] for e in prompt.entities] == ["text_mention"]
    assert saved == t("hd.comment_saved", "en")
    [fb] = await client.helpdesk.feedback(job_of(ask))
    assert (fb.rater, fb.rating, fb.comment) == (f"tg:{BOB.id}", "down", "원인을 알려 주세요")
    assert len(engine.requests) == 1, "the comment, a reply to the bot, was not a question"


async def test_a_responder_answers_and_resolves_by_replying_to_the_hand_off(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    tg.chat(DESK, "supergroup", "helpdesk", forum=True)
    engine = ScriptedEngine(lambda _r: "확인해 보겠습니다.")
    async with make_worker(engine=engine), make_bot():
        told = await said(tg, await tg.command(GROUP, CAROL, "/human 모니터가 안 켜져요"))
        await tg.wait_for(lambda: bool(tg.bot_messages(DESK)))
        [handoff] = tg.bot_messages(DESK)
        await tg.send_text(DESK, RESPONDER, "자리로 가겠습니다", reply_to=handoff.message_id,
                           thread_id=TOPIC)
        done = await tg.command(DESK, RESPONDER, "/resolve", reply_to=handoff.message_id,
                                thread_id=TOPIC)
        resolved = t("hd.resolved", "ko", name="rita")
        await tg.wait_for(lambda: resolved in [m.text for m in tg.bot_messages(GROUP)])
        await tg.wait_for(lambda: reply_texts(tg, done) == [resolved])
    assert told == t("hd.called", "ko")
    assert "모니터가 안 켜져요" in handoff.versions[0]
    esc = await client.helpdesk.escalation(conv(GROUP, CAROL))
    assert esc is not None and esc.state == "resolved" and esc.first_human_at > 0
    assert engine.requests == [], "nothing here asked the model"
