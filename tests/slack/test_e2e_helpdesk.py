"""End to end, the team helpdesk in Slack: a channel in mode `all`, the buttons under every
answer (rate, comment modal, ask a person, resolve), the thread as context, `/kullm stats`,
a button on a forgotten answer. Real Bolt + slack-sdk against the fake Slack, real Redis,
real worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bots.slack.target import conversation
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.settings import Settings
from kullm_core.texts import t
from kullm_core.wire import Escalation, Feedback
from tests.conftest import test_settings_for
from tests.fakes.slack_api import TEAM, FakeSlack, Message
from tests.fakes.slack_blocks import buttons_of
from tests.slack.helpers import answered, job_of
from tests.test_cli import _env, _kullm

HELP = "C0HELP"
HELPERS = "S0HELPERS"
ADMIN = "U0ADMIN"


@pytest.fixture
def settings(redis_url: str, tiny_model_dir: Path, tmp_path: Path) -> Settings:
    return test_settings_for(
        redis_url, tiny_model_dir, tmp_path,
        limits={"admins": [f"slack:{TEAM}:{ADMIN}"]},
        helpdesk={"channels": {f"slack:{TEAM}:{HELP}": {"mode": "all",
                                                        "responders": [HELPERS]}}})


def answer_buttons(msg: Message) -> list[str]:
    return [b["action_id"] for b in buttons_of(msg.blocks)]


def last_reply(fake: FakeSlack, channel: str, thread: str | None) -> Message:
    return fake.bot_messages(channel, thread)[-1]


async def told(fake: FakeSlack, user: str, text: str) -> None:
    await fake.wait_for(lambda: text in fake.ephemeral_texts(user), what=f"{user} told {text}")


async def test_a_helpdesk_channel_answers_each_top_level_question_in_its_thread(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        msg = await fake.user_message("VPN 접속이 안 되는데 어떻게 하나요?", channel=HELP,
                                      mention=False)
        await answered(fake, client, msg)
    [reply] = fake.bot_messages(HELP, msg.ts)
    job = job_of(msg)
    assert reply.streamed and answer_buttons(reply) == [f"hd:up:{job}", f"hd:down:{job}",
                                                        f"hd:human:{job}"]
    labels = [b["text"]["text"] for b in buttons_of(reply.blocks)]
    assert labels == ["👍", "👎", t("hd.human", "ko")]
    assert fake.calls_of("chat.update") == 0, "the buttons ride on chat.stopStream"
    assert not fake.block_errors and not fake.violations


async def test_up_then_down_keeps_one_rating_and_the_modal_takes_a_comment(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        msg = await fake.user_message("비밀번호를 바꾸는 방법은?", channel=HELP, mention=False)
        await answered(fake, client, msg)
        reply, job = last_reply(fake, HELP, msg.ts), job_of(msg)
        assert await fake.press(reply, f"hd:up:{job}", user="U0BOB") is not None
        await told(fake, "U0BOB", t("hd.rated", "ko", rating="👍"))
        assert not fake.views, "no comment asked for 👍"
        await fake.press(reply, f"hd:down:{job}", user="U0BOB")
        await told(fake, "U0BOB", t("hd.rated_again", "ko", rating="👎"))
        [rated] = await client.helpdesk.feedback(job)
        assert (rated.rater, rated.rating, rated.comment) == (f"slack:{TEAM}:U0BOB", "down", "")
        await fake.wait_for(lambda: bool(fake.views), what="the comment modal")
        [opened] = fake.views
        assert opened["user"] == "U0BOB"
        assert opened["view"]["title"]["text"] == t("hd.comment_title", "ko")
        assert await fake.submit(opened, "설정 메뉴 위치가 틀렸어요") is not None
        await told(fake, "U0BOB", t("hd.comment_saved", "ko"))
        await fake.slash("stats", user=ADMIN, channel=HELP)
        await fake.wait_for(lambda: len(fake.responses) == 1, what="the statistics")
        await fake.slash("stats", user="U0BOB", channel=HELP)
        await fake.wait_for(lambda: len(fake.responses) == 2, what="the refusal")
    assert await client.helpdesk.feedback(job) == [Feedback(
        job_id=job, rater=f"slack:{TEAM}:U0BOB", rating="down",
        comment="설정 메뉴 위치가 틀렸어요", at=(await client.helpdesk.feedback(job))[0].at)]
    turns = await client.history(conversation(TEAM, HELP, msg.ts))
    assert len(turns) == 1, "pressing buttons never asks the model"
    assert len(fake.bot_messages(HELP, msg.ts)) == 1
    stats, refused = (r["text"] for r in fake.responses)
    assert "1 asked, 1 answered" in stats and "👍 0 👎 1" in stats
    assert refused == t("hd.admins_only", "ko")
    assert fake.responses[0].get("response_type", "ephemeral") == "ephemeral"
    assert not fake.block_errors
    # What an operator reads back, as separate processes: `kullm stats` and `kullm export`.
    env = _env(client.settings)
    code, out, err = await _kullm(env, "stats", "--json", "--days", "1")
    assert code == 0, err
    [row] = [r for r in json.loads(out) if r["channel"] == f"slack:{TEAM}:{HELP}"]
    assert {k: row["counts"][k] for k in ("questions", "answered", "up", "down")} == {
        "questions": 1, "answered": 1, "up": 0, "down": 1}
    code, out, err = await _kullm(env, "export", "--feedback", "-")
    assert code == 0, err
    [line] = [json.loads(x) for x in out.splitlines()]
    assert (line["question"], line["rating"], line["comment"]) == (
        "비밀번호를 바꾸는 방법은?", "down", "설정 메뉴 위치가 틀렸어요")
    assert line["answer"] == turns[0].assistant


async def test_ask_a_person_hands_off_until_a_responder_resolves(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    fake.usergroups[HELPERS] = ["U0CAROL"]
    async with run_bot(fake):
        ask = await fake.user_message("프린터가 고장났어요?", channel=HELP, mention=False)
        await answered(fake, client, ask)
        job = job_of(ask)
        await fake.press(last_reply(fake, HELP, ask.ts), f"hd:human:{job}")
        await told(fake, "U0ALICE", t("hd.called", "ko"))
        handoff = last_reply(fake, HELP, ask.ts)
        assert f"<!subteam^{HELPERS}>" in handoff.text and "<@U0ALICE>" in handoff.text
        assert "프린터가 고장났어요?" in handoff.text
        assert f"https://fake.slack.com/archives/{HELP}/p{ask.ts.replace('.', '')}" \
            in handoff.text
        conv = conversation(TEAM, HELP, ask.ts)
        esc_id = Escalation.id_for(conv)
        assert answer_buttons(handoff) == [f"hd:res:{esc_id}"]
        # The next message in the thread: the responder writes; the bot stays silent.
        carol = await fake.user_message("제가 확인해 볼게요", user="U0CAROL", channel=HELP,
                                        thread_ts=ask.ts, mention=False)
        await fake.press(handoff, f"hd:res:{esc_id}", user="U0BOB")
        await told(fake, "U0BOB", t("hd.not_responder", "ko"))
        await fake.press(handoff, f"hd:res:{esc_id}", user="U0CAROL")
        resolved = t("hd.resolved", "ko", name="name-u0carol")
        await fake.wait_for(lambda: any(m.text == resolved for m in
                                        fake.bot_messages(HELP, ask.ts)), what="resolved")
        await fake.wait_for(lambda: answer_buttons(handoff) == [], what="button dropped")
        assert resolved in handoff.text
        again = await fake.user_message("이제 다시 물어볼게요", channel=HELP, thread_ts=ask.ts,
                                        mention=False)
        await answered(fake, client, again, thread=ask.ts, after=again.ts)
    esc = await client.helpdesk.escalation(conv)
    assert esc is not None and esc.state == "resolved" and esc.resolver == f"slack:{TEAM}:U0CAROL"
    assert esc.opened_at < esc.first_human_at < esc.resolved_at, "Carol's reply was timed"
    assert [x.user for x in await client.history(conv)] == ["프린터가 고장났어요?",
                                                            "이제 다시 물어볼게요"]
    assert not [m for m in fake.bot_messages(HELP, ask.ts) if carol.ts < m.ts < handoff.ts]
    assert not fake.block_errors


async def test_a_mention_mid_thread_quotes_the_earlier_human_messages(
    fake: FakeSlack, run_bot: Any, client: Any, make_worker: Any
) -> None:
    engine = ScriptedEngine(lambda _: "재시작해 보세요.", chunk_chars=4)
    async with make_worker(engine=engine), run_bot(fake):
        root = await fake.user_message("배포가 계속 실패해요", mention=False)
        await fake.user_message("로그에 exit 1 이 보여요", user="U0BOB", thread_ts=root.ts,
                                mention=False)
        ask = await fake.user_message("원인이 뭘까요?", user="U0CAROL", thread_ts=root.ts)
        await answered(fake, client, ask, thread=root.ts)
    [request] = engine.requests
    lines = request.messages[-1]["content"].split("\n")
    assert lines == ["name-u0alice: 배포가 계속 실패해요", "name-u0bob: 로그에 exit 1 이 보여요",
                     "name-u0carol: 원인이 뭘까요?"]


async def test_a_button_on_a_forgotten_answer_says_it_is_gone(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        msg = await fake.user_message("기억해 둘 질문", channel="D0ALICE")
        await answered(fake, client, msg, after=msg.ts)
        reply, job = last_reply(fake, "D0ALICE", None), job_of(msg)
        assert answer_buttons(reply) == [f"hd:up:{job}", f"hd:down:{job}", f"hd:human:{job}"]
        assert not reply.streamed, "a top-level DM answer is posted and updated"
        exchange = await client.helpdesk.exchange(job)
        assert exchange is not None and exchange.channel == f"slack:{TEAM}:dm", \
            "DMs count as one place: no user's DM id in the statistics"
        await client.forget("slack", "U0ALICE")
        await fake.press(reply, f"hd:up:{job}")
        await told(fake, "U0ALICE", t("hd.gone", "ko"))
        await fake.press(reply, f"hd:human:{job}")
        await fake.wait_for(lambda: fake.ephemeral_texts("U0ALICE").count(t("hd.gone", "ko"))
                            == 2, what="gone, twice")
    assert await client.helpdesk.feedback(job) == []
    assert await client.helpdesk.escalation(conversation(TEAM, "D0ALICE", "")) is None


async def test_thread_context_skips_what_the_bot_already_answered(
    fake: FakeSlack, run_bot: Any, client: Any, make_worker: Any
) -> None:
    engine = ScriptedEngine(lambda _: "확인해 볼게요.", chunk_chars=4)
    async with make_worker(engine=engine), run_bot(fake, require_mention_in_threads=True):
        root = await fake.user_message("사내 위키가 열리지 않아요")
        await answered(fake, client, root)
        await fake.user_message("저는 열려요", user="U0BOB", thread_ts=root.ts, mention=False)
        ask = await fake.user_message("차이가 뭘까요?", user="U0CAROL", thread_ts=root.ts)
        await answered(fake, client, ask, thread=root.ts, after=ask.ts)
    messages = engine.requests[-1].messages
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    # Alice's first question did not wait for her name (users.info): her id stands for it.
    assert messages[0]["content"] == "U0ALICE: 사내 위키가 열리지 않아요"
    assert messages[1]["content"] == "확인해 볼게요."
    assert messages[2]["content"].split("\n") == ["name-u0bob: 저는 열려요",
                                                  "name-u0carol: 차이가 뭘까요?"]


async def test_english_speakers_get_english_buttons_and_answers(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    fake.locales["U0BOB"] = "en-US"
    async with run_bot(fake):
        await fake.slash("help", user="U0BOB")  # Bob's language is known from here on
        await fake.wait_for(lambda: bool(fake.responses), what="help")
        msg = await fake.user_message("How do I reset my password?", user="U0BOB",
                                      channel=HELP, mention=False)
        await answered(fake, client, msg, lang="en")
        reply, job = last_reply(fake, HELP, msg.ts), job_of(msg)
        assert [b["text"]["text"] for b in buttons_of(reply.blocks)] == [
            "👍", "👎", t("hd.human", "en")]
        await fake.press(reply, f"hd:down:{job}", user="U0BOB")
        await told(fake, "U0BOB", t("hd.rated", "en", rating="👎"))
        await fake.wait_for(lambda: bool(fake.views), what="the comment modal")
    assert fake.views[0]["view"]["title"]["text"] == t("hd.comment_title", "en")
    assert t("hd.human", "en") == "🙋 Ask a person"
