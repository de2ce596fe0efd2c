"""End to end through the core's reply lifecycle: an adapter down longer than a reply stream
lives, and two adapter replicas sharing one workspace's budget (the limit-enforcing fake)."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from bots.slack import SlackBot, SlackTuning
from kullm_core.engine.scripted import ScriptedEngine
from tests.fakes.slack_api import FakeSlack, Limits
from tests.slack.conftest import TEST_TUNING, slack_settings
from tests.slack.helpers import answered, done_of, job_of, long_settings, shows, visible

ANSWER = "어댑터가 내려가 있는 동안 끝난 답변입니다. 기록에서 되살려 보여 줍니다. " * 16


async def _until_stopped(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, 30)


async def test_an_adapter_down_longer_than_the_reply_stream_shows_the_answer_once(
    fake: FakeSlack, client: Any, settings: Any, make_worker: Any
) -> None:
    engine = ScriptedEngine(lambda _: ANSWER, chunk_chars=4, delay_s=0.04)
    tuning = SlackTuning(**(TEST_TUNING.model_dump() | {"shutdown_grace_s": 0.0}))
    s = long_settings(settings)
    async with make_worker(engine=engine, settings=s):
        first = SlackBot(slack_settings(s, fake), client, tuning)
        stop = asyncio.Event()
        task = asyncio.create_task(first.run(stop))
        await asyncio.wait_for(first.ready.wait(), 20)
        msg = await fake.user_message("내가 없는 동안 답해 줘")
        await fake.wait_for(lambda: len(fake.reply_text(msg.channel, msg.ts)) > 10,
                            what="the reply to start streaming")
        await _until_stopped(stop, task)  # handed back mid-stream
        shown = fake.reply_text(msg.channel, msg.ts)
        done = await done_of(client, msg)  # the worker finishes while no adapter follows
    assert shown and ANSWER.startswith(shown) and len(shown) < len(ANSWER)
    # Down longer than `queue.reply_ttl_s`: the reply stream is gone, the history is not.
    await client.redis.delete(client.keys.reply(job_of(msg)))
    second = SlackBot(slack_settings(s, fake), client, tuning)
    stop2 = asyncio.Event()
    task2 = asyncio.create_task(second.run(stop2))
    try:
        await asyncio.wait_for(second.ready.wait(), 20)
        await shows(fake, msg.channel, msg.ts, visible(done))
        assert second.deliveries is not None
        await asyncio.wait_for(second.deliveries.wait(job_of(msg)), 30)
        assert await second.deliveries.registry.job_ids() == []
    finally:
        await _until_stopped(stop2, task2)
    assert done.text == ANSWER
    [reply] = fake.bot_messages(msg.channel, msg.ts)
    assert reply.visible == ANSWER, "the full answer, in the message that showed its start"


# A small workspace budget on a fast clock: each replica alone could spend all of it, so
# only a budget shared through Redis keeps the two inside the fake's limits.
FAST = Limits(post_per_channel=(1, 0.2), update_per_team=(10, 3.0),
              stream_per_team=(20, 3.0), tier3=(50, 3.0), tier4=(100, 3.0))
FAST_TUNING = SlackTuning(**(TEST_TUNING.model_dump() | {
    "updates_per_minute": 200, "stream_calls_per_minute": 400,
    "posts_per_second_per_channel": 5.0, "budget_window_s": 0.5, "lease_s": 10.0}))
"""Leases that do not lapse on a loaded machine: a lapsed one hands its reply to the other
replica (shown once: test_e2e_delivery) and counts it as delivered by both."""


async def test_two_replicas_share_the_budget_and_answer_every_question_once(
    client: Any, settings: Any, make_worker: Any, run_bot: Any
) -> None:
    engine = ScriptedEngine(lambda r: f"{r.messages[-1]['content']}에 대한 답입니다. " * 16,
                            chunk_chars=2, delay_s=0.02)
    async with FakeSlack(limits=FAST, spread_events=True) as fake, \
            make_worker(engine=engine, settings=long_settings(settings)), \
            run_bot(fake, FAST_TUNING) as a, run_bot(fake, FAST_TUNING) as b:
        await fake.wait_for(lambda: fake.connections() == 2, what="both replicas")
        asks = [fake.user_message(f"채널 {c} 질문 {i}", channel=f"C0CHAN{c}")
                for c in range(3) for i in range(4)]
        asks += [fake.user_message(f"DM 질문 {u}", user=f"U0DM{u}", channel=f"D0DM{u}")
                 for u in range(6)]
        msgs = await asyncio.gather(*asks)
        dones = await asyncio.gather(*(answered(fake, client, m, after=m.ts if
                                                m.channel.startswith("D") else "")
                                       for m in msgs))
    for msg, done in zip(msgs, dones, strict=True):
        thread = None if msg.channel.startswith("D") else msg.ts
        [shown] = [m.visible for m in fake.bot_messages(msg.channel, thread, after=msg.ts
                                                          if thread is None else "")]
        assert shown == visible(done), "every answer complete, once"
    assert not fake.violations
    assert a.deliveries.delivered and b.deliveries.delivered, "both replicas delivered"
    assert a.deliveries.delivered + b.deliveries.delivered == len(msgs)


async def test_a_redis_blip_mid_reply_leaves_the_reply_complete(
    fake: FakeSlack, run_bot: Any, client: Any, make_worker: Any, settings: Any,
    redis_url: str
) -> None:
    engine = ScriptedEngine(lambda _: ANSWER, chunk_chars=4, delay_s=0.04)
    killer = Redis.from_url(redis_url)
    async with make_worker(engine=engine, settings=long_settings(settings)), run_bot(fake):
        msg = await fake.user_message("레디스가 잠깐 끊겨도 답해 줘")
        await fake.wait_for(lambda: len(fake.reply_text(msg.channel, msg.ts)) > 10,
                            what="the reply to start streaming")
        assert await killer.execute_command("CLIENT", "KILL", "TYPE", "normal") >= 1
        done = await answered(fake, client, msg)
    await killer.aclose()
    assert done.text == ANSWER
    [reply] = fake.bot_messages(msg.channel, msg.ts)
    assert reply.visible == ANSWER and "⚠️" not in reply.visible
