"""Cancel, stop strings, timeouts, a full queue, failing jobs, truncation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from kullm_core.client import CoreClient
from kullm_core.engine.base import GenerationRequest
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.keys import Keys
from kullm_core.settings import Settings
from tests.conftest import test_settings_for
from tests.core.helpers import CONV, USER, ask, collect, deltas_text, done


def _long(settings: Settings, tmp_path: Path, **over: Any) -> Settings:
    return test_settings_for(settings.redis.url, Path(settings.model.path), tmp_path, **over)


async def test_stop_cancels_mid_stream_and_keeps_the_partial_reply(
    client: CoreClient, make_worker: Any, settings: Settings, tmp_path: Path
) -> None:
    s = _long(settings, tmp_path, generation={"max_new_tokens": 3000})
    async with make_worker(settings=s):
        sub = await client.submit(CONV, USER, "긴 이야기를 해줘", "c1")
        events = []
        async for _, e in client.events(sub.job_id):
            events.append(e)
            if e.type == "delta" and [x.type for x in events].count("delta") == 1:
                assert await client.cancel(CONV) == sub.job_id
    final = done(events)
    assert final.finish_reason == "cancelled"
    assert 0 < final.completion_tokens < 3000 and final.text == deltas_text(events)
    [turn] = await client.history(CONV)
    assert turn.assistant == final.text and turn.finish_reason == "cancelled"
    assert await client.cancel(CONV) is None  # nothing left to stop


async def test_stop_strings_cut_the_reply_and_never_leak(
    client: CoreClient, make_worker: Any, settings: Settings, tmp_path: Path
) -> None:
    s = _long(settings, tmp_path, generation={"stop_strings": ["###"], "max_new_tokens": 200})
    script = "첫 줄입니다 #은 괜찮고 ## 도 괜찮지만 ### 여기서 끝"
    engine = ScriptedEngine(lambda _r: script, chunk_chars=1)
    async with make_worker(engine=engine, settings=s):
        sub = await client.submit(CONV, USER, "hi", "s1")
        events = await collect(client, sub.job_id)
    final = done(events)
    assert final.text == "첫 줄입니다 #은 괜찮고 ## 도 괜찮지만 "
    assert final.finish_reason == "stop_string"
    assert deltas_text(events) == final.text


async def test_job_timeout_cuts_and_marks_the_reply(
    client: CoreClient, make_worker: Any, settings: Settings, tmp_path: Path
) -> None:
    s = _long(settings, tmp_path, queue={"job_timeout_s": 1.5},
              generation={"max_new_tokens": 3000})
    engine = ScriptedEngine(lambda _r: "가나다라마바사" * 500, chunk_chars=2, delay_s=0.01)
    async with make_worker(engine=engine, settings=s):
        sub = await client.submit(CONV, USER, "hi", "to1")
        final = done(await collect(client, sub.job_id))
    assert final.finish_reason == "timeout" and 0 < len(final.text) < 3500
    assert (await client.history(CONV))[0].finish_reason == "timeout"


async def test_full_queue_answers_busy_with_the_line_length(
    redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    s = _long(settings, tmp_path, queue={"max_pending": 2})
    async with CoreClient(redis, s) as client:  # no worker: nothing is taken
        a = await client.submit(CONV, USER, "1", "q1")
        b = await client.submit(CONV, USER, "2", "q2")
        c = await client.submit(CONV, USER, "3", "q3")
    assert (a.status, a.position, b.position) == ("queued", 1, 2)
    assert c.status == "busy" and c.error is not None
    assert c.error.kind == "busy" and c.error.params == {"waiting": 2}


async def test_a_job_that_keeps_failing_is_dead_lettered_and_the_user_told(
    client: CoreClient, make_worker: Any, settings: Settings, tmp_path: Path, redis: Redis
) -> None:
    s = _long(settings, tmp_path, queue={"max_attempts": 2, "reclaim_idle_s": 0.6,
                                         "heartbeat_s": 0.2})

    def boom(_r: GenerationRequest) -> str:
        raise RuntimeError("engine exploded")

    async with make_worker(engine=ScriptedEngine(boom), settings=s):
        sub = await client.submit(CONV, USER, "hi", "dl1")
        events = await collect(client, sub.job_id)
    assert events[-1].type == "error" and events[-1].kind == "failed"
    dead = [json.loads(x) for x in await redis.lrange(Keys().dead, 0, -1)]
    assert [d["reason"] for d in dead] == ["max_attempts"]
    assert await redis.xlen(Keys().jobs) == 0
    assert await client.history(CONV) == []


async def test_history_is_truncated_and_too_long_message_is_refused(
    client: CoreClient, make_worker: Any, settings: Settings, tmp_path: Path
) -> None:
    s = _long(settings, tmp_path, generation={"context_window": 400, "max_new_tokens": 24})
    async with make_worker(settings=s):
        for i in range(4):
            await ask(client, f"질문 {i}: " + "서울 부산 대구 " * 12, f"tr{i}")
        sub = await client.submit(CONV, USER, "짧은 질문", "tr-last")
        events = await collect(client, sub.job_id)
        [started] = [e for e in events if e.type == "started"]
        assert started.dropped_turns > 0
        assert started.prompt_tokens <= 400 - 24
        sub = await client.submit(CONV, USER, "아주 긴 메시지 " * 300, "tr-huge")
        events = await collect(client, sub.job_id)
    assert events[-1].type == "error" and events[-1].kind == "too_long"
    assert len(await client.history(CONV)) == 5


async def test_queued_jobs_see_their_place_in_line_move(
    redis: Redis, settings: Settings, tmp_path: Path, make_worker: Any
) -> None:
    async with CoreClient(redis, settings) as client:
        convs = [CONV.model_copy(update={"chat": f"p{i}"}) for i in range(3)]
        subs = [await client.submit(c, USER, "hi", f"pos{i}") for i, c in enumerate(convs)]
        assert [await client.position(s.job_id) for s in subs] == [1, 2, 3]
        _, first = await anext(aiter(client.events(subs[2].job_id)))
        # the reply stream starts with the place in line, before any worker looks at it
        assert first.type == "queued" and first.position == 3
        async with make_worker():
            for s in subs:
                done(await collect(client, s.job_id))
        assert [await client.position(s.job_id) for s in subs] == [0, 0, 0]


async def test_heartbeats_keep_flowing_while_the_engine_generates(
    client: CoreClient, make_worker: Any, settings: Settings, tmp_path: Path, redis: Redis
) -> None:
    s = _long(settings, tmp_path, generation={"max_new_tokens": 3000})
    async with make_worker(settings=s) as w:
        sub = await client.submit(CONV, USER, "긴 이야기", "hb1")
        beats: list[float] = []
        async for _, e in client.events(sub.job_id):
            if e.type == "delta":
                raw = await redis.get(Keys().worker(w.id))
                at = json.loads(raw)["at"] if raw else 0.0
                if not beats or at != beats[-1]:
                    beats.append(at)
                if len(beats) == 3:
                    await client.cancel(CONV)
            if e.type == "done":
                break
    assert len(beats) >= 3  # the health key was rewritten while tokens were streaming


async def test_waiting_users_see_their_place_in_line_move_up(
    client: CoreClient, make_worker: Any, settings: Settings, tmp_path: Path
) -> None:
    s = _long(settings, tmp_path, batching={"max_batch_size": 1},
              generation={"max_new_tokens": 200})
    engine = ScriptedEngine(lambda _r: "가나" * 25, chunk_chars=2, delay_s=0.1)
    # All three wait before the worker starts, so the third is #3 whatever the machine's load.
    convs = [CONV.model_copy(update={"chat": f"line{i}"}) for i in range(3)]
    subs = [await client.submit(c, USER, "hi", f"line{i}") for i, c in enumerate(convs)]
    async with make_worker(engine=engine, settings=s):
        events = await collect(client, subs[2].job_id)
    positions = [e.position for e in events if e.type == "queued"]
    first_start = [e.type for e in events].index("started")
    assert positions[0] == 3 and positions[-1] == 1 and positions == sorted(positions, reverse=True)
    assert all(e.type != "queued" for e in events[first_start:])
    assert done(events).text == "가나" * 25
