"""Admission (`Limiter.admit`): the per-minute moving window and the daily token quota,
reserved atomically, through real Redis and (at the end) the real worker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from kullm_core.client import CoreClient
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.keys import Keys
from kullm_core.limits import Limiter
from kullm_core.settings import LimitSettings
from kullm_core.wire import ConversationRef, UserRef
from tests.conftest import test_settings_for
from tests.core.helpers import collect

USER = UserRef(platform="telegram", id="7", name="kim")
T0 = 1_800_000_000.0


def _limiter(redis: Redis, **limits: Any) -> Limiter:
    return Limiter(redis, Keys("admit"), LimitSettings(**limits))


async def test_concurrent_requests_never_reserve_more_than_is_left(redis: Redis) -> None:
    lim = _limiter(redis, daily_tokens=100, requests_per_minute=0)
    got = await asyncio.gather(*(lim.admit(USER, f"j{i}", 40, now=T0) for i in range(5)))
    granted = sorted((g.max_tokens for g in got if g.refusal is None), reverse=True)
    assert granted == [40, 40, 20]
    refused = [g.refusal for g in got if g.refusal is not None]
    assert [r.kind for r in refused] == ["quota", "quota"]
    assert refused[0].params["limit"] == 100


async def test_a_finished_job_frees_its_reservation_and_counts_what_it_used(
    redis: Redis
) -> None:
    keys = Keys("admit")
    lim = Limiter(redis, keys, LimitSettings(daily_tokens=100, requests_per_minute=0))
    assert (await lim.admit(USER, "a", 80, now=T0)).max_tokens == 80
    assert (await lim.admit(USER, "b", 80, now=T0)).max_tokens == 20
    # "a" ends having generated 30 tokens (what the commit script does)
    await redis.set(keys.done("a"), "1")
    await redis.incrby(keys.quota("telegram:7", "20270115"), 30)
    assert (await lim.admit(USER, "c", 80, now=T0)).max_tokens == 50  # 100 - 30 - 20 ("b")
    await lim.release(USER, "c", now=T0)
    usage = await lim.usage(USER, now=T0)
    assert (usage.used_today, usage.daily_limit) == (30, 100)


async def test_the_minute_is_a_moving_window(redis: Redis) -> None:
    lim = _limiter(redis, daily_tokens=0, requests_per_minute=3)
    for i, at in enumerate((0, 10, 20)):
        assert (await lim.admit(USER, f"m{i}", 1, now=T0 + at)).refusal is None
    late = await lim.admit(USER, "m3", 1, now=T0 + 30)
    assert late.refusal is not None and late.refusal.kind == "rate_limited"
    assert late.refusal.params["retry_after"] == 30  # when the first leaves the window
    assert (await lim.admit(USER, "m4", 1, now=T0 + 60.5)).refusal is None
    assert (await lim.usage(USER, now=T0 + 61)).requests_last_minute == 3


async def test_an_admin_sets_a_users_own_limit_and_admins_are_never_limited(
    redis: Redis
) -> None:
    lim = _limiter(redis, daily_tokens=1000, requests_per_minute=0, admins=["tg:1"])
    await lim.set_daily_limit("telegram:7", 10)
    assert (await lim.admit(USER, "x", 500, now=T0)).max_tokens == 10
    assert (await lim.usage(USER)).daily_limit == 10
    await lim.set_daily_limit("telegram:7", None)
    assert (await lim.daily_limit("telegram:7")) == 1000
    admin = UserRef(platform="telegram", id="1")
    assert (await lim.admit(admin, "y", 5000, now=T0)).max_tokens == 0


async def test_the_answer_is_generated_within_what_the_quota_reserved(
    redis: Redis, redis_url: str, tiny_model_dir: Path, tmp_path: Path, make_worker: Any
) -> None:
    settings = test_settings_for(redis_url, tiny_model_dir, tmp_path,
                                 limits={"daily_tokens": 5, "requests_per_minute": 0})
    engine = ScriptedEngine(lambda _r: "가나다라마바사아자차카타파하", chunk_chars=1)
    conv = ConversationRef(platform="telegram", chat="7", user="7")
    async with CoreClient(redis, settings) as client, make_worker(engine=engine,
                                                                   settings=settings):
        sub = await client.submit(conv, USER, "길게 말해 줘", "q-1")
        events = await collect(client, sub.job_id)
        done = events[-1]
        assert done.type == "done" and done.finish_reason == "length"
        assert done.completion_tokens == 5 and done.text == "가나다라마"
        refused = await client.submit(conv, USER, "또", "q-2")
        assert refused.error is not None and refused.error.kind == "quota"
        assert (await client.limiter.usage(USER)).used_today == 5
