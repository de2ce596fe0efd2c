"""Replies streamed through the scheduler into the fake Slack (real slack-sdk client, no worker).

The reply events are fed by hand, so every case (restarted attempt, diverging final text,
refusals, limits) is exact; the end-to-end files run the same code behind the real worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from redis.asyncio import Redis
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.app import scopes_for
from bots.slack.config import SlackTuning
from bots.slack.reply import Mode, SlackShared
from bots.slack.scheduler import Scheduler
from bots.slack.sink import SlackReply
from bots.slack.target import Target
from kullm_core.budget import SendBudget
from kullm_core.keys import Keys
from kullm_core.settings import Settings
from tests.fakes.slack_api import BOT_TOKEN, TEAM, FakeSlack, Limits


@dataclass
class Rig:
    fake: FakeSlack
    env: SlackShared
    scheduler: Scheduler
    n: int = 0

    def reply(self, *, mode: Mode = "stream", channel: str = "C0GENERAL",
              thread: str | None = None) -> SlackReply:
        self.n += 1
        ts = thread if thread is not None else f"1700000000.{self.n:06d}"
        target = Target(TEAM, channel, ts, "U0ALICE", ts or f"1700000000.{self.n:06d}")
        reply = SlackReply(f"job{self.n}", target, self.env, mode=mode)
        self.scheduler.add(reply)
        return reply


@asynccontextmanager
async def rig(settings: Settings, limits: Limits | None = None,
              **tuning: Any) -> AsyncIterator[Rig]:
    tune = SlackTuning(**tuning)
    scopes = scopes_for(settings, tune)
    redis = Redis.from_url(settings.redis.url)
    await redis.flushall()  # the send budget of an earlier test (its pauses) starts empty
    async with FakeSlack(limits=limits, echo_bot_messages=False) as fake, \
            aiohttp.ClientSession() as session:
        scheduler = Scheduler(SendBudget(redis, Keys(settings.redis.prefix), "slack"), scopes)
        web = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url, session=session,
                             retry_handlers=[scheduler.rate_limit_handler(2)])
        async with scheduler:
            yield Rig(fake, SlackShared(web, tune, scheduler.wake, scopes), scheduler)
    await redis.aclose()


async def feed(reply: SlackReply, text: str, *, step: int = 7, final: str | None = None,
               pause: float = 0.0) -> None:
    """Stream `text` into the reply like the core's progress calls, then finish it."""
    for i in range(0, len(text), step):
        await reply.progress(text[:i + step])
        if pause:
            await asyncio.sleep(pause)  # generation pace, not synchronisation
    reply.end(text if final is None else final, "")


async def delivered(reply: SlackReply, timeout: float = 30) -> None:
    await asyncio.wait_for(reply.done.wait(), timeout)
    assert not reply.gave_up


KOREAN = ("고려대학교 KULLM3는 한국어 대화 모델입니다. **굵게** 쓰고, `코드`도 씁니다.\n\n"
          "1. 첫째 항목\n2. 둘째 항목\n\n마지막 문단입니다. ")


async def test_native_stream_shows_exactly_the_reply(settings: Settings) -> None:
    async with rig(settings) as r:
        reply = r.reply()
        await feed(reply, KOREAN, pause=0.01)
        await delivered(reply)
        thread = reply.target.thread_ts
        assert r.fake.reply_text("C0GENERAL", thread) == KOREAN
        assert r.fake.calls_of("chat.startStream") == 1
        assert r.fake.calls_of("chat.stopStream") == 1
        assert r.fake.calls_of("chat.postMessage") == 0
        assert not r.fake.violations


async def test_update_mode_posts_once_and_edits(settings: Settings) -> None:
    async with rig(settings) as r:
        reply = r.reply(mode="update")
        await feed(reply, KOREAN, pause=0.01)
        await delivered(reply)
        msgs = r.fake.bot_messages("C0GENERAL", reply.target.thread_ts)
        assert [m.visible for m in msgs] == [KOREAN]
        assert msgs[0].blocks[0]["type"] == "markdown"
        assert r.fake.calls_of("chat.postMessage") == 1
        assert not r.fake.violations


async def test_a_new_attempt_rewrites_what_was_streamed(settings: Settings) -> None:
    async with rig(settings) as r:
        reply = r.reply()
        await reply.progress("첫 시도의 답변이 중간에 끊겼")
        await r.fake.wait_for(lambda: bool(r.fake.reply_text("C0GENERAL",
                                                                   reply.target.thread_ts)))
        await feed(reply, "두 번째 시도의 완전한 답변입니다.")
        await delivered(reply)
        assert r.fake.reply_text("C0GENERAL", reply.target.thread_ts) == \
            "두 번째 시도의 완전한 답변입니다."


async def test_final_text_wins_over_the_deltas(settings: Settings) -> None:
    async with rig(settings) as r:
        reply = r.reply()
        await reply.progress("안녕하세요 여러분 반갑")
        await r.fake.wait_for(lambda: bool(r.fake.reply_text("C0GENERAL",
                                                                   reply.target.thread_ts)))
        reply.end("안녕하세요 모두", "")
        await delivered(reply)
        assert r.fake.reply_text("C0GENERAL", reply.target.thread_ts) == "안녕하세요 모두"


def _long(paragraphs: int) -> str:
    return "".join(f"{i}번째 문단입니다. " + "한국어 문장이 이어집니다. " * 12 + "\n\n"
                   for i in range(paragraphs))


async def test_long_replies_continue_in_further_messages(settings: Settings) -> None:
    text = _long(12)
    for mode in ("stream", "update"):
        async with rig(settings, max_message_chars=600) as r:
            reply = r.reply(mode=mode)  # type: ignore[arg-type]
            await feed(reply, text, step=40)
            await delivered(reply)
            msgs = r.fake.bot_messages("C0GENERAL", reply.target.thread_ts)
            assert "".join(m.visible for m in msgs) == text, mode
            assert len(msgs) >= len(text) // 600
            assert all(len(m.visible) <= 600 for m in msgs)
            assert all(m.visible.endswith("\n\n") for m in msgs[:-1]), "cut between paragraphs"


async def test_code_blocks_cut_in_two_are_closed_and_reopened(settings: Settings) -> None:
    code = "```python\n" + "".join(f"print({i})  # 줄 {i}\n" for i in range(80)) + "```\n"
    async with rig(settings, max_message_chars=400) as r:
        reply = r.reply(mode="update")
        await feed(reply, code, step=50)
        await delivered(reply)
        msgs = r.fake.bot_messages("C0GENERAL", reply.target.thread_ts)
        assert len(msgs) > 1
        for m in msgs:
            assert m.visible.count("```") % 2 == 0, m.visible
        assert msgs[1].visible.startswith("```python\n")


async def test_slack_refusing_a_long_message_makes_it_shorter(settings: Settings) -> None:
    text = _long(6)
    async with rig(settings, Limits(max_markdown=700)) as r:
        reply = r.reply(mode="update")
        await feed(reply, text, step=80)
        await delivered(reply)
        assert r.fake.reply_text("C0GENERAL", reply.target.thread_ts) == text
    async with rig(settings, Limits(max_stream_total=900)) as r:
        reply = r.reply(mode="stream")
        await feed(reply, text, step=80, pause=0.01)
        await delivered(reply)
        msgs = r.fake.bot_messages("C0GENERAL", reply.target.thread_ts)
        assert "".join(m.visible for m in msgs) == text
        assert len(msgs) > 1


async def test_no_native_streaming_falls_back_to_post_and_update(settings: Settings) -> None:
    async with rig(settings) as r:
        r.fake.streaming_error = "unknown_method"
        reply = r.reply()
        await feed(reply, KOREAN, pause=0.01)
        await delivered(reply)
        assert r.fake.reply_text("C0GENERAL", reply.target.thread_ts) == KOREAN
        assert r.fake.calls_of("chat.startStream") == 1
        assert r.fake.calls_of("chat.postMessage") == 1
        assert not r.env.native_ok(TEAM), "the workspace is remembered"


async def test_workspace_without_markdown_blocks_gets_mrkdwn(settings: Settings) -> None:
    async with rig(settings) as r:
        r.fake.reject_markdown_blocks = True
        reply = r.reply(mode="update")
        await feed(reply, "**굵게** 그리고 [링크](https://korea.ac.kr)")
        await delivered(reply)
        [msg] = r.fake.bot_messages("C0GENERAL", reply.target.thread_ts)
        assert msg.visible == "*굵게* 그리고 <https://korea.ac.kr|링크>"


async def test_rate_limited_updates_still_finish_once(settings: Settings) -> None:
    async with rig(settings) as r:
        r.fake.fail("chat.update", times=2, retry_after=1)
        reply = r.reply(mode="update")
        await feed(reply, KOREAN, step=5, pause=0.02)
        await delivered(reply)
        msgs = r.fake.bot_messages("C0GENERAL", reply.target.thread_ts)
        assert [m.visible for m in msgs] == [KOREAN]
        assert r.fake.injected["chat.update"] == 2
        assert not r.fake.violations


async def test_a_post_whose_answer_was_lost_is_not_posted_twice(settings: Settings) -> None:
    async with rig(settings) as r:
        r.fake.fail("chat.postMessage", error="fatal_error", status=200, processed=True)
        reply = r.reply(mode="update")
        await feed(reply, KOREAN)
        await delivered(reply)
        msgs = r.fake.bot_messages("C0GENERAL", reply.target.thread_ts)
        assert [m.visible for m in msgs] == [KOREAN]
        assert r.fake.calls_of("conversations.replies") == 1


async def test_many_replies_share_the_workspace_budget_without_429(settings: Settings) -> None:
    """20 replies in 4 channels at 60x Slack's speed: the fake's limits are never hit."""
    limits = Limits(post_per_channel=(1, 1 / 60), update_per_team=(50, 1.0),
                    stream_per_team=(100, 1.0))
    async with rig(settings, limits, updates_per_minute=50 * 60, budget_window_s=10 / 60,
                   posts_per_second_per_channel=60.0, stream_calls_per_minute=100 * 60) as r:
        replies = [r.reply(mode="update" if i % 2 else "stream", channel=f"C0CHAN{i % 4}")
                   for i in range(20)]
        await asyncio.gather(*(feed(x, KOREAN * 3, step=4, pause=0.005) for x in replies))
        await asyncio.gather(*(delivered(x, 60) for x in replies))
        for x in replies:
            assert r.fake.reply_text(x.target.channel, x.target.thread_ts) == KOREAN * 3
        assert not r.fake.violations
        assert r.fake.calls_of("chat.update") >= 10, "updates were merged, not skipped"

