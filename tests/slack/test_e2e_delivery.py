"""End to end: retries and duplicates, 429s, signatures, access, restarts mid-stream."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from bots.slack import SlackBot, SlackTuning
from bots.slack.target import conversation
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.errors import ConfigError
from kullm_core.texts import t
from tests.fakes.slack_api import TEAM, FakeSlack
from tests.slack.conftest import TEST_TUNING, slack_settings
from tests.slack.helpers import answered, done_of, job_of, long_settings, shows, visible


async def test_an_event_delivered_three_times_is_answered_once(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        msg = await fake.user_message("세 번 배달되는 질문", times=3)
        await answered(fake, client, msg)
        later = await fake.user_message("확인용 질문", thread_ts=msg.ts, mention=False)
        await answered(fake, client, later, thread=msg.ts, after=later.ts)
    assert [d[1] for d in fake.deliveries if d[2] == "ack"].count(2) >= 2, "retry_attempt 2"
    assert len(fake.bot_messages(msg.channel, msg.ts)) == 2
    turns = await client.history(conversation(TEAM, msg.channel, msg.ts))
    assert [x.user for x in turns] == ["세 번 배달되는 질문", "확인용 질문"]


async def test_http_retries_with_x_slack_retry_num_are_answered_once(
    http_fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(http_fake):
        msg = await http_fake.user_message("HTTP로 세 번 배달", times=3)
        await answered(http_fake, client, msg)
        dm = await http_fake.user_message("DM도 됩니다", channel="D0ALICE")
        await answered(http_fake, client, dm, after=dm.ts)
        ack, seconds = await http_fake.slash("help")
        assert ack is not None and seconds < 3
    assert len(http_fake.bot_messages(msg.channel, msg.ts)) == 1
    assert len(await client.history(conversation(TEAM, msg.channel, msg.ts))) == 1


async def test_bad_stale_or_missing_signatures_get_401(
    http_fake: FakeSlack, run_bot: Any, client: Any
) -> None:
    async with run_bot(http_fake), aiohttp.ClientSession() as session:
        body = json.dumps(http_fake.event_body({
            "type": "app_mention", "user": "U0EVE", "text": "<@U0KULLMBOT> 해킹",
            "ts": "1700000000.000100", "channel": "C0GENERAL", "team": TEAM}))
        good = http_fake.sign(body)
        cases = {
            "bad": {**good, "X-Slack-Signature": "v0=" + "0" * 64},
            "stale": http_fake.sign(body, timestamp=int(time.time()) - 600),
            "missing": {},
        }
        for name, headers in cases.items():
            async with session.post(http_fake.app_url, data=body, headers={
                    "Content-Type": "application/json", **headers}) as resp:
                assert resp.status == 401, name
    assert not await client.seen("slack", "msg:T0KULLM01:C0GENERAL:1700000000.000100")


async def test_a_429_on_updates_still_completes_the_reply_once(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    fake.fail("chat.update", times=3, retry_after=1)
    async with run_bot(fake, native_streaming=False):
        msg = await fake.user_message("업데이트가 거절되는 질문")
        done = await answered(fake, client, msg)
    [reply] = fake.bot_messages(msg.channel, msg.ts)
    assert reply.visible == visible(done)
    assert not fake.violations
    assert fake.calls_of("chat.postMessage") == 1


async def test_unlisted_people_get_a_polite_private_refusal(
    fake: FakeSlack, run_bot: Any, client: Any, settings: Any
) -> None:
    settings.limits.allowed_users = [f"slack:{TEAM}:U0ALICE"]
    async with run_bot(fake):
        await fake.user_message("저도 써도 되나요?", user="U0MALLORY")
        await fake.wait_for(lambda: bool(fake.ephemerals), what="refusal")
    [refusal] = fake.ephemerals
    assert refusal["user"] == "U0MALLORY"
    assert refusal["text"] == t("error.forbidden", "ko")
    assert fake.bot_messages("C0GENERAL", refusal["thread_ts"]) == []


async def test_rate_limits_from_the_core_are_shown_to_the_user(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any, settings: Any
) -> None:
    settings.limits.requests_per_minute = 1
    async with run_bot(fake):
        first = await fake.user_message("첫 질문")
        await answered(fake, client, first)
        await fake.user_message("곧바로 두 번째", thread_ts=first.ts, mention=False)
        await fake.wait_for(lambda: bool(fake.ephemerals), what="rate limit notice")
    assert "요청이 너무 잦습니다" in fake.ephemerals[0]["text"]


SLOW = "재시작을 견디는 답변의 문장입니다. " * 30


async def _restart(fake: FakeSlack, client: Any, settings: Any, make_worker: Any,
                   crash: bool) -> None:
    engine = ScriptedEngine(lambda _: SLOW, chunk_chars=4, delay_s=0.04)
    tuning = SlackTuning(**(TEST_TUNING.model_dump() | {"shutdown_grace_s": 0.0}))
    async with make_worker(engine=engine, settings=long_settings(settings)):
        first = SlackBot(slack_settings(settings, fake), client, tuning)
        stop = asyncio.Event()
        task = asyncio.create_task(first.run(stop))
        await first.ready.wait()
        msg = await fake.user_message("재시작 중에도 답해 주세요")
        await fake.wait_for(lambda: len(fake.reply_text(msg.channel, msg.ts)) > 20,
                            what="the reply to start streaming")
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        if crash:
            # A crashed adapter never releases its lease: the next one must wait it out.
            assert first.deliveries is not None
            await client.redis.set(first.deliveries.registry.lease_key(job_of(msg)),
                                   "crashed-adapter", px=int(tuning.lease_s * 1000))
        shown = fake.reply_text(msg.channel, msg.ts)
        assert shown and len(shown) < len(SLOW)
        second = SlackBot(slack_settings(settings, fake), client, tuning)
        stop2 = asyncio.Event()
        task2 = asyncio.create_task(second.run(stop2))
        try:
            done = await done_of(client, msg)
            await shows(fake, msg.channel, msg.ts, visible(done))
            assert second.deliveries is not None
            await asyncio.wait_for(second.deliveries.wait(job_of(msg)), 30)
            assert await second.deliveries.registry.job_ids() == []
        finally:
            stop2.set()
            await task2
    assert done.text == SLOW
    assert len(fake.bot_messages(msg.channel, msg.ts)) == 1, "no duplicate posts"
    assert job_of(msg)


async def test_an_adapter_restart_mid_stream_finishes_the_reply(
    fake: FakeSlack, client: Any, settings: Any, make_worker: Any
) -> None:
    await _restart(fake, client, settings, make_worker, crash=False)


async def test_an_adapter_crash_mid_stream_is_taken_over_after_the_lease(
    fake: FakeSlack, client: Any, settings: Any, make_worker: Any
) -> None:
    await _restart(fake, client, settings, make_worker, crash=True)


async def test_a_refused_bot_token_stops_the_adapter_at_start(
    fake: FakeSlack, client: Any, settings: Any
) -> None:
    bot = SlackBot(slack_settings(settings, fake, bot_token="xoxb-revoked"), client, TEST_TUNING)
    with pytest.raises(ConfigError, match="invalid_auth"):
        await bot.run(asyncio.Event())
    bot = SlackBot(slack_settings(settings, fake, app_token="xapp-revoked"), client, TEST_TUNING)
    with pytest.raises(ConfigError, match=r"slack\.app_token"):
        await bot.run(asyncio.Event())
    with pytest.raises(ConfigError, match="app_token"):
        SlackBot(slack_settings(settings, fake, app_token=""), client, TEST_TUNING)


async def test_stop_works_while_socket_mode_cannot_connect(
    fake: FakeSlack, client: Any, settings: Any
) -> None:
    fake.fail("apps.connections.open", times=1000, error="internal_error", status=500)
    bot = SlackBot(slack_settings(settings, fake), client,
                   SlackTuning(socket_ping_interval_s=0.2))
    stop = asyncio.Event()
    task = asyncio.create_task(bot.run(stop))
    await fake.wait_for(lambda: fake.calls_of("apps.connections.open") >= 3,
                        what="connection attempts")
    stop.set()
    await asyncio.wait_for(task, 10)
    assert not bot.ready.is_set()
