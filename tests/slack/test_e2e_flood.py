"""One person flooding the Slack app (real Bolt against the fake Slack, real Redis and
worker): someone else is still answered, the flooder gets one refusal, and a flood from
someone not allowed does no Redis work."""

from __future__ import annotations

import asyncio
from typing import Any

from kullm_core.texts import t
from tests.fakes.slack_api import TEAM, FakeSlack
from tests.slack.helpers import answered

FLOOD = 100


async def test_a_flood_from_someone_not_allowed_gets_one_refusal_and_costs_no_redis(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any, settings: Any
) -> None:
    settings.limits.allowed_users = [f"slack:{TEAM}:U0ALICE"]
    settings.limits.refusal_interval_s = 3600.0  # one refusal for the whole test: exact count
    async with run_bot(fake):
        await asyncio.gather(*(fake.user_message(f"도배 {i}", user="U0MALLORY")
                               for i in range(FLOOD)))
        await asyncio.gather(*(fake.user_message(f"DM 도배 {i}", user="U0MALLORY",
                                                 channel="D0MALLORY") for i in range(FLOOD)))
        ask = await fake.user_message("VPN 설정을 알려 주세요")
        await answered(fake, client, ask)
    refusals = [e for e in fake.ephemerals if e["user"] == "U0MALLORY"]
    assert [e["text"] for e in refusals] == [t("error.forbidden", "ko")] * 2  # per channel
    assert {e["channel"] for e in refusals} == {"C0GENERAL", "D0MALLORY"}
    # Only the cached profile that the refusal's language needed names the flooder.
    mallory = [k for k in await client.redis.keys("*") if b"U0MALLORY" in k]
    assert mallory == [f"kullm:slack:locale:{TEAM}:U0MALLORY".encode()]
    assert len(await client.redis.keys("*:dedupe:*")) == 1  # Alice's question only


async def test_a_rate_limited_flooder_gets_one_notice_and_a_bystander_is_answered(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any, settings: Any
) -> None:
    settings.limits.requests_per_minute = 2
    settings.limits.refusal_interval_s = 3600.0
    async with run_bot(fake):
        first = await fake.user_message("첫 질문", user="U0MALLORY")
        await answered(fake, client, first)
        for i in range(FLOOD // 2):
            await fake.user_message(f"또 {i}", user="U0MALLORY", thread_ts=first.ts,
                                    mention=False)
        ask = await fake.user_message("저도 질문 있어요", user="U0BOB")
        await answered(fake, client, ask)
        await fake.wait_for(lambda: any(e["user"] == "U0MALLORY" for e in fake.ephemerals),
                            what="rate limit notice")
    notices = [e for e in fake.ephemerals if e["user"] == "U0MALLORY"]
    assert len(notices) == 1 and "요청이 너무 잦습니다" in notices[0]["text"]
