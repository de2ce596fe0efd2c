"""End to end: `/kullm help | reset | stop | forget` (acknowledged within Slack's 3 s)."""

from __future__ import annotations

from typing import Any

from bots.slack.commands import FORGET_YES
from bots.slack.target import conversation
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.texts import t
from tests.fakes.slack_api import TEAM, FakeSlack
from tests.slack.helpers import answered, done_of, long_settings, shows, visible


def responses(fake: FakeSlack) -> list[str]:
    return [r.get("text", "") for r in fake.responses]


async def slash_ok(fake: FakeSlack, text: str, **kw: Any) -> None:
    ack, seconds = await fake.slash(text, **kw)
    assert ack is not None, "the command was not acknowledged"
    assert seconds < 3.0


async def test_help_explains_the_commands(fake: FakeSlack, run_bot: Any) -> None:
    async with run_bot(fake):
        await slash_ok(fake, "help")
        await fake.wait_for(lambda: bool(fake.responses), what="help")
    assert "/kullm reset" in responses(fake)[0]


async def test_reset_starts_a_new_conversation_in_the_thread(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        first = await fake.user_message("첫 질문")
        await answered(fake, client, first)
        conv = conversation(TEAM, first.channel, first.ts)
        assert len(await client.history(conv)) == 1
        await slash_ok(fake, "reset")
        await fake.wait_for(lambda: t("reset", "ko") in responses(fake), what="reset answer")
        assert await client.history(conv) == []
        again = await fake.user_message("새 질문", thread_ts=first.ts, mention=False)
        await answered(fake, client, again, thread=first.ts, after=again.ts)
        assert [x.user for x in await client.history(conv)] == ["새 질문"]


async def test_reset_in_a_dm(fake: FakeSlack, run_bot: Any, client: Any, worker: Any) -> None:
    async with run_bot(fake):
        msg = await fake.user_message("안녕", channel="D0ALICE")
        await answered(fake, client, msg, after=msg.ts)
        await slash_ok(fake, "reset", channel="D0ALICE")
        await fake.wait_for(lambda: t("reset", "ko") in responses(fake), what="reset answer")
    assert await client.history(conversation(TEAM, "D0ALICE", "")) == []


async def test_stop_ends_the_reply_being_written(
    fake: FakeSlack, run_bot: Any, client: Any, make_worker: Any, settings: Any
) -> None:
    engine = ScriptedEngine(lambda _: "천천히 쓰는 긴 답변입니다. " * 40, chunk_chars=2,
                            delay_s=0.05)
    async with make_worker(engine=engine, settings=long_settings(settings)), run_bot(fake):
        msg = await fake.user_message("길게 설명해 주세요")
        await fake.wait_for(lambda: len(fake.reply_text(msg.channel, msg.ts)) > 10,
                            what="the reply to start")
        await slash_ok(fake, "stop")
        done = await done_of(client, msg)
        assert done.finish_reason == "cancelled"
        await shows(fake, msg.channel, msg.ts, visible(done))
        await fake.wait_for(lambda: t("stop_requested", "ko") in responses(fake))
    assert visible(done).endswith(t("stopped", "ko"))
    assert len(done.text) < len("천천히 쓰는 긴 답변입니다. " * 40)


async def test_stop_with_nothing_running(fake: FakeSlack, run_bot: Any) -> None:
    async with run_bot(fake):
        await slash_ok(fake, "stop")
        await fake.wait_for(lambda: t("nothing_to_stop", "ko") in responses(fake))


async def test_forget_asks_then_deletes_what_is_stored(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        msg = await fake.user_message("기억해 줘")
        await answered(fake, client, msg)
        await slash_ok(fake, "forget")
        await fake.wait_for(lambda: bool(fake.responses), what="confirmation")
        buttons = fake.responses[0]["blocks"][1]["elements"]
        assert buttons[0]["action_id"] == FORGET_YES
        assert await fake.click(FORGET_YES, buttons[0]["value"]) is not None
        await fake.wait_for(lambda: t("forgot", "ko", turns=1) in responses(fake))
    assert await client.history(conversation(TEAM, msg.channel, msg.ts)) == []


async def test_retry_regenerates_the_last_answer_in_its_thread(
    fake: FakeSlack, run_bot: Any, client: Any, make_worker: Any
) -> None:
    answers = iter(["첫 번째 답변입니다.", "다시 쓴 답변입니다."])
    engine = ScriptedEngine(lambda _: next(answers), chunk_chars=2, delay_s=0.01)
    async with run_bot(fake):
        await slash_ok(fake, "retry")  # nothing asked yet: said privately
        await fake.wait_for(lambda: t("nothing_to_retry", "ko") in responses(fake)
                            + [e["text"] for e in fake.ephemerals], what="nothing to retry")
        async with make_worker(engine=engine):
            first = await fake.user_message("한 번 더 써 줄래?")
            await answered(fake, client, first)
            await slash_ok(fake, "retry")
            await shows(fake, first.channel, first.ts, "첫 번째 답변입니다.다시 쓴 답변입니다.")
    turns = await client.history(conversation(TEAM, first.channel, first.ts))
    assert [(x.user, x.assistant) for x in turns] == [("한 번 더 써 줄래?", "다시 쓴 답변입니다.")]
