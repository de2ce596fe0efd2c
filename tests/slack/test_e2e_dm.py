"""End to end in DMs and the assistant (AI app) surface, and UI language."""

from __future__ import annotations

from typing import Any

from bots.slack.target import conversation
from kullm_core.texts import t
from tests.fakes.slack_api import TEAM, FakeSlack
from tests.slack.helpers import answered, shows, visible


async def test_a_dm_is_one_conversation_answered_at_top_level(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        first = await fake.user_message("안녕하세요", channel="D0ALICE")
        done1 = await answered(fake, client, first, after=first.ts)
        second = await fake.user_message("다음 질문", channel="D0ALICE")
        done2 = await answered(fake, client, second, after=second.ts)
    assert [m.visible for m in fake.bot_messages("D0ALICE")] == [visible(done1), visible(done2)]
    turns = await client.history(conversation(TEAM, "D0ALICE", ""))
    assert [x.user for x in turns] == ["안녕하세요", "다음 질문"]


async def test_a_dm_thread_is_its_own_conversation(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        top = await fake.user_message("맨 위 질문", channel="D0ALICE")
        await answered(fake, client, top, after=top.ts)
        threaded = await fake.user_message("스레드 질문", channel="D0ALICE", thread_ts=top.ts)
        await answered(fake, client, threaded, thread=top.ts)
    assert len(await client.history(conversation(TEAM, "D0ALICE", ""))) == 1
    assert len(await client.history(conversation(TEAM, "D0ALICE", top.ts))) == 1


async def test_the_assistant_thread_greets_suggests_and_shows_thinking(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        thread = await fake.assistant_thread_started(channel="D0ALICE")
        await shows(fake, "D0ALICE", thread, t("start", "ko"))
        await fake.wait_for(lambda: bool(fake.prompts), what="suggested prompts")
        greeting = fake.bot_messages("D0ALICE", thread)[0]
        msg = await fake.user_message("구름에 대해 알려줘", channel="D0ALICE", thread_ts=thread)
        await answered(fake, client, msg, thread=thread, after=greeting.ts)
    assert ("D0ALICE", thread, "생각 중…") in fake.statuses
    assert len(fake.prompts[0]["prompts"]) == 3
    assert len(await client.history(conversation(TEAM, "D0ALICE", thread))) == 1


async def test_ui_texts_follow_the_users_slack_locale(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    fake.locales["U0JOHN"] = "en-US"
    async with run_bot(fake):
        empty = await fake.user_message("", user="U0JOHN")
        await shows(fake, empty.channel, empty.ts, t("empty_mention", "en"))
        msg = await fake.user_message("Tell me about Korea University", user="U0JOHN")
        await answered(fake, client, msg, lang="en")
    assert fake.calls_of("users.info") == 1, "the locale is cached"
