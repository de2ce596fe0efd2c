"""End to end in channels: real Bolt + slack-sdk against the fake Slack, real Redis, real worker."""

from __future__ import annotations

from typing import Any

from bots.slack.target import conversation, source_id
from kullm_core.engine.base import GenerationRequest
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.settings import Settings
from tests.fakes.slack_api import BOT_USER, TEAM, FakeSlack
from tests.slack.helpers import answered, job_of, long_settings, shows, visible


def echo(request: GenerationRequest) -> str:
    """Shows what the model was given: how many messages, and the last question."""
    return f"[{len(request.messages)}] {request.messages[-1]['content']}에 답합니다."


async def test_a_mention_is_answered_in_its_thread_by_streaming(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        msg = await fake.user_message("고려대학교에 대해 알려 주세요")
        done = await answered(fake, client, msg)
    [reply] = fake.bot_messages(msg.channel, msg.ts)
    assert reply.visible == visible(done)
    assert reply.streamed, "native chat.startStream / appendStream / stopStream"
    assert fake.calls_of("chat.startStream") == 1
    [turn] = await client.history(conversation(TEAM, msg.channel, msg.ts))
    assert turn.assistant == done.text
    assert not fake.violations


async def test_a_follow_up_in_the_thread_continues_without_a_mention(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        first = await fake.user_message("첫 번째 질문입니다")
        await answered(fake, client, first)
        follow = await fake.user_message("이어서 질문합니다", thread_ts=first.ts, mention=False)
        done = await answered(fake, client, follow, thread=first.ts, after=follow.ts)
    turns = await client.history(conversation(TEAM, first.channel, first.ts))
    assert [t.user for t in turns] == ["첫 번째 질문입니다", "이어서 질문합니다"]
    assert turns[-1].assistant == done.text


async def test_the_model_sees_the_thread_history(
    fake: FakeSlack, run_bot: Any, client: Any, make_worker: Any
) -> None:
    async with make_worker(engine=ScriptedEngine(echo, chunk_chars=4)), run_bot(fake):
        # `echo` counts the prompt's messages: no system message (the chat template supplies
        # KULLM3's default), then one user turn, then that turn and its answer before "둘".
        first = await fake.user_message("하나")
        await shows(fake, first.channel, first.ts, "[1] 하나에 답합니다.")
        second = await fake.user_message("둘", thread_ts=first.ts, mention=False)
        await shows(fake, first.channel, first.ts, "[3] 둘에 답합니다.", after=second.ts)


async def test_two_people_share_one_helpdesk_thread(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        alice = await fake.user_message("VPN이 안 됩니다", user="U0ALICE")
        await answered(fake, client, alice)
        bob = await fake.user_message("저도 같은 문제예요", user="U0BOB", thread_ts=alice.ts,
                                      mention=False)
        await answered(fake, client, bob, thread=alice.ts, after=bob.ts)
        carol = await fake.user_message("해결 방법이 있나요?", user="U0CAROL",
                                        thread_ts=alice.ts)
        await answered(fake, client, carol, thread=alice.ts, after=carol.ts)
    turns = await client.history(conversation(TEAM, alice.channel, alice.ts))
    assert [t.user_id for t in turns] == ["U0ALICE", "U0BOB", "U0CAROL"]


async def test_messages_in_threads_without_the_bot_are_not_answered(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        chatter = await fake.user_message("사람끼리 하는 이야기", mention=False)
        reply = await fake.user_message("그러게요", thread_ts=chatter.ts, mention=False)
        asked = await fake.user_message("질문 있어요")
        await answered(fake, client, asked)
    assert fake.bot_messages(chatter.channel, chatter.ts) == []
    assert not await client.history(conversation(TEAM, reply.channel, chatter.ts))


async def test_threads_can_require_a_mention(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake, require_mention_in_threads=True):
        first = await fake.user_message("첫 질문")
        await answered(fake, client, first)
        await fake.user_message("멘션 없는 말", thread_ts=first.ts, mention=False)
        asked = await fake.user_message("멘션한 질문", thread_ts=first.ts)
        await answered(fake, client, asked, thread=first.ts, after=asked.ts)
    turns = await client.history(conversation(TEAM, first.channel, first.ts))
    assert [t.user for t in turns] == ["첫 질문", "멘션한 질문"]


async def test_the_bots_own_and_other_bots_messages_are_ignored(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        msg = await fake.user_message("안녕하세요")
        await answered(fake, client, msg)
        own = fake.bot_messages(msg.channel, msg.ts)[0]
        for event in (
            {"type": "message", "user": BOT_USER, "bot_id": "B0KULLM01", "text": own.visible},
            {"type": "message", "subtype": "bot_message", "bot_id": "B0OTHER", "text": "hi"},
            {"type": "message", "subtype": "message_changed", "hidden": True,
             "message": {"user": "U0ALICE", "text": f"<@{BOT_USER}> 수정됨", "ts": msg.ts}},
            {"type": "message", "subtype": "message_deleted", "hidden": True,
             "deleted_ts": msg.ts},
        ):
            body = fake.event_body(event | {"channel": msg.channel, "ts": f"{own.ts}9",
                                            "thread_ts": msg.ts, "channel_type": "channel"})
            await fake.deliver(body)
        later = await fake.user_message("다음 질문", thread_ts=msg.ts, mention=False)
        await answered(fake, client, later, thread=msg.ts, after=later.ts)
    turns = await client.history(conversation(TEAM, msg.channel, msg.ts))
    assert [t.user for t in turns] == ["안녕하세요", "다음 질문"]
    assert len(fake.bot_messages(msg.channel, msg.ts)) == 2


async def test_a_reply_longer_than_slacks_limits_continues_in_the_thread(
    fake: FakeSlack, run_bot: Any, client: Any, make_worker: Any, settings: Settings
) -> None:
    text = "".join(f"## {i}장\n\n" + "긴 답변의 문장이 계속 이어집니다. " * 30 + "\n\n"
                   for i in range(20))
    assert len(text) > 12000
    engine = ScriptedEngine(lambda _: text, chunk_chars=60)
    async with make_worker(engine=engine, settings=long_settings(settings)), run_bot(fake):
        msg = await fake.user_message("아주 길게 설명해 주세요")
        done = await answered(fake, client, msg)
    assert done.text == text
    parts = fake.bot_messages(msg.channel, msg.ts)
    assert len(parts) >= 4
    assert all(len(p.visible) <= 3800 for p in parts)
    assert job_of(msg)
    assert not fake.violations


async def test_files_and_empty_mentions_get_a_short_answer(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        empty = await fake.user_message("")
        await shows(fake, empty.channel, empty.ts,
                    "무엇을 도와드릴까요? 멘션과 함께 질문을 적어 주세요.")
        image = await fake.user_message("", files=True)
        await shows(fake, image.channel, image.ts,
                    "죄송합니다. 지금은 텍스트 메시지만 이해할 수 있습니다.")
        both = await fake.user_message("이 그림에 대해 설명해 줘", files=True)
        await shows(fake, both.channel, both.ts,
                    "죄송합니다. 지금은 텍스트 메시지만 이해할 수 있습니다.")
    assert await client.job_state(job_of(both), source_id(TEAM, both.channel, both.ts)) \
        == "never", "the attached file was never answered as if it had been read"


async def test_a_question_waiting_in_line_shows_an_hourglass_until_answered(
    fake: FakeSlack, run_bot: Any, client: Any, make_worker: Any, settings: Settings
) -> None:
    one_at_a_time = long_settings(settings).model_copy(
        update={"batching": settings.batching.model_copy(update={"max_batch_size": 1})})
    engine = ScriptedEngine(lambda _: "차례대로 답합니다. " * 8, chunk_chars=4, delay_s=0.03)
    async with make_worker(engine=engine, settings=one_at_a_time), run_bot(fake):
        msgs = [await fake.user_message(f"{i}번째 질문", channel=f"C0Q{i}") for i in range(3)]
        # Bolt acknowledges an event before its listener runs, so the three questions may
        # reach the queue in any order: whichever waits behind two others gets the hourglass.
        await fake.wait_for(lambda: any((m.channel, m.ts, "hourglass_flowing_sand")
                                        in fake.reactions for m in msgs), what="the hourglass")
        for msg in msgs:
            await answered(fake, client, msg)
        await fake.wait_for(lambda: not fake.reactions, what="the hourglass to go")
