"""Delivery under pressure: long replies, flood control, refused formatting, a worker that
restarted a job, a full queue, and the adapter itself restarting or being killed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from bots.telegram.split import MAX_MESSAGE, utf16_len
from bots.telegram.texts import t
from kullm_core.client import CoreClient
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.settings import Settings
from kullm_core.wire import DeltaEvent, DoneEvent, StartedEvent
from tests.fakes.telegram_api import TOKEN, FakeTelegram
from tests.telegram.conftest import MakeBot, with_telegram
from tests.telegram.helpers import (
    ALICE,
    BOB,
    GROUP,
    done_of,
    expected_texts,
    job_of,
    reply_texts,
    wait_reply,
)

PARAGRAPH = ("서울은 대한민국의 수도이며 약 천만 명이 사는 큰 도시입니다. 한강이 도시를 가로질러 "
             "흐르고, 북한산과 남산이 도시를 둘러싸고 있습니다. **경복궁**은 조선 왕조의 "
             "법궁이었습니다. ") * 4
CODE = "```python\n" + "".join(f"def step_{i}(x):\n    return x + {i}\n" for i in range(40)) + "```"
LONG_MARKDOWN = "\n\n".join([PARAGRAPH] * 10 + [CODE] + [PARAGRAPH] * 8)


def engine(text: str, chunk: int = 3, delay_s: float = 0.02) -> ScriptedEngine:
    return ScriptedEngine(lambda _r: text, chunk_chars=chunk, delay_s=delay_s)


async def test_a_reply_longer_than_a_message_continues_in_further_messages(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    assert len(LONG_MARKDOWN) > 2 * MAX_MESSAGE
    async with make_worker(engine=engine(LONG_MARKDOWN, chunk=500)), make_bot():
        msg = await tg.mention(GROUP, ALICE, "서울에 대해 길게 설명해 줘")
        done, shown = await wait_reply(tg, client, msg)
    assert done.text == LONG_MARKDOWN
    assert len(shown) >= 3
    assert all(utf16_len(m.text) <= MAX_MESSAGE for m in shown)
    assert [m.reply_to for m in shown] == [msg.message_id] + [m.message_id for m in shown[:-1]]
    with_code = [m for m in shown if "def step_" in m.text]
    assert len(with_code) == 1  # the code block fits a message, so it was not cut
    (pre,) = [e for e in with_code[0].entities if e["type"] == "pre"]
    code_text = with_code[0].text.encode("utf-16-le")[2 * pre["offset"]:
                                                     2 * (pre["offset"] + pre["length"])]
    assert code_text.decode("utf-16-le").count("def step_") == 40
    assert not any("**" in m.text for m in shown)  # rendered, not raw Markdown
    assert not tg.violations


async def test_a_flood_control_storm_delays_but_never_loses_the_reply(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    text = "폭주 제어를 견디는 답변입니다. " * 12
    async with make_worker(engine=engine(text, chunk=6, delay_s=0.03)), make_bot():
        dm = await tg.send_text(ALICE.id, ALICE, "질문 하나")
        group = await tg.mention(GROUP, BOB, "question two")
        await tg.wait_for(lambda: tg.counted_calls(ALICE.id) and tg.counted_calls(GROUP))
        tg.forced_429[ALICE.id].extend([1, 2, 1])
        tg.forced_429[GROUP].extend([2, 1, 1])
        for msg in (dm, group):
            done, _shown = await wait_reply(tg, client, msg)
            assert len(done.text) > 100 and text.startswith(done.text)
    storms = [c for c in tg.calls if c.error.startswith("429")]
    assert len(storms) == 6
    assert not tg.violations  # nothing was sent into a chat before its retry_after had passed


async def test_formatting_refused_by_telegram_falls_back_to_the_plain_reply(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    markdown = "**중요:** 서울은 `수도`입니다.\n\n- 첫째: 경복궁\n- 둘째: 남산"
    tg.reject_entities = True
    async with make_worker(engine=engine(markdown)), make_bot():
        msg = await tg.send_text(ALICE.id, ALICE, "서식 있는 답을 줘")
        _done, shown = await wait_reply(tg, client, msg, plain=True)
    assert [m.text for m in shown] == [markdown]  # exactly what the model wrote
    assert shown[0].entities == []
    refused = [c for c in tg.calls if "can't parse entities" in c.error]
    assert refused and refused[0].params.get("entities")


async def test_a_job_restarted_by_another_worker_drops_the_earlier_text(
    tg: FakeTelegram, make_bot: MakeBot, client: CoreClient
) -> None:
    async with make_bot():
        msg = await tg.mention(GROUP, ALICE, "재시작 테스트")
        job = job_of(msg)
        await tg.wait_for(lambda: any(a[0] == GROUP for a in tg.actions))
        await client.queue.emit(job, StartedEvent(attempt=1))
        await client.queue.emit(job, DeltaEvent(text="죽은 워커의 글", attempt=1))
        await tg.wait_for(lambda: reply_texts(tg, msg) == ["죽은 워커의 글"])
        await client.queue.emit(job, StartedEvent(attempt=2))
        await client.queue.emit(job, DeltaEvent(text="늦게 온 옛 조각", attempt=1))
        await client.queue.emit(job, DeltaEvent(text="새 워커의 답", attempt=2))
        await client.queue.emit(job, DoneEvent(text="새 워커의 답", finish_reason="stop",
                                               attempt=2))
        await tg.wait_for(lambda: reply_texts(tg, msg) == ["새 워커의 답"])
    (shown,) = tg.replies_to(GROUP, msg.message_id)
    assert "늦게 온 옛 조각" not in "".join(shown.versions)


async def test_a_full_queue_shows_the_place_and_answers_when_there_is_room(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient,
    tg_settings: Settings,
) -> None:
    settings = with_telegram(tg_settings, queue=tg_settings.queue.model_copy(
        update={"max_pending": 1}))
    core = CoreClient(client.redis, settings)
    async with make_worker(engine=engine("천천히 답합니다. " * 6, delay_s=0.05)), \
            make_bot(settings=settings, core=core):
        first = await tg.send_text(ALICE.id, ALICE, "먼저 온 질문")
        await tg.wait_for(lambda: any(tg.drafts.values()))
        second = await tg.send_text(BOB.id, BOB, "second question")
        await tg.wait_for(lambda: bool(reply_texts(tg, second)))
        # One busy policy on every platform: the place behind the full queue (0 waiting).
        place = t("queued", "en", position=1)
        assert reply_texts(tg, second) == [place]
        await wait_reply(tg, client, first)
        done, shown = await wait_reply(tg, client, second)
    assert shown[0].versions[0] == place
    assert [m.text for m in shown] == expected_texts(done, "en")


async def test_a_saturated_worker_shows_the_place_in_line_then_the_answer(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient,
    tg_settings: Settings,
) -> None:
    one_slot = with_telegram(tg_settings, batching=tg_settings.batching.model_copy(
        update={"max_batch_size": 1}))
    async with make_worker(engine=engine("한 번에 하나씩 답합니다. " * 4, delay_s=0.05),
                           settings=one_slot), make_bot():
        first = await tg.send_text(ALICE.id, ALICE, "첫 질문")
        await tg.wait_for(lambda: any(tg.drafts.values()))
        waiting = await tg.send_text(BOB.id, BOB, "second in line")
        done, shown = await wait_reply(tg, client, waiting)
        await wait_reply(tg, client, first)
    assert shown[0].versions[0] == t("queued", "en", position=1)
    assert [m.text for m in shown] == expected_texts(done, "en")
    assert not [k for k in tg.drafts if k[0] == BOB.id]  # the placeholder became the answer


async def test_adapter_restart_mid_stream_finishes_the_reply_once(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    text = "재시작해도 끝까지 한 번만 전달되는 답변입니다. " * 8
    async with make_worker(engine=engine(text, chunk=6, delay_s=0.05)):
        async with make_bot(grace_s=0):
            dm = await tg.send_text(ALICE.id, ALICE, "개인 질문")
            group = await tg.mention(GROUP, BOB, "group question")
            await tg.wait_for(lambda: any(tg.drafts.values()) and reply_texts(tg, group))
        started_by_first = tg.replies_to(GROUP, group.message_id)[0].message_id
        async with make_bot() as second:
            for msg in (dm, group):
                done, _shown = await wait_reply(tg, client, msg)
                assert len(done.text) > 100 and text.startswith(done.text)
            assert second.deliveries.adopted == 2
    assert len(tg.replies_to(ALICE.id, dm.message_id)) == 1
    assert [m.message_id for m in tg.replies_to(GROUP, group.message_id)] == [started_by_first]
    sends = [c for c in tg.calls if c.method == "sendMessage"
             and int(c.params["chat_id"]) in (ALICE.id, GROUP)]
    assert len(sends) == 2  # one message per reply, no doubles
    assert not tg.violations


@pytest.mark.slow
async def test_adapter_killed_mid_stream_is_taken_over_after_its_lease(
    tg: FakeTelegram, tg_settings: Settings, make_bot: MakeBot, make_worker: Any,
    client: CoreClient,
) -> None:
    text = "강제 종료 뒤에도 이어서 전달되는 답변입니다. " * 8
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KULLM_", "TELEGRAM_"))}
    env.update({
        "TELEGRAM_BOT_TOKEN": TOKEN, "KULLM_TELEGRAM__BASE_URL": tg.base_url,
        "KULLM_TELEGRAM__MIN_EDIT_INTERVAL_S": "0.25",  # the fake's scaled-down limits
        "KULLM_TELEGRAM__GROUP_MESSAGES_PER_MINUTE": "120",
        "KULLM_REDIS__URL": tg_settings.redis.url, "KULLM_DATA_DIR": str(tg_settings.data_dir),
        "KULLM_QUEUE__HEARTBEAT_S": "0.2", "KULLM_QUEUE__RECLAIM_IDLE_S": "1.0",
        "KULLM_LIMITS__REQUESTS_PER_MINUTE": "0", "PTB_TIMEDELTA": "1",
    })
    async with make_worker(engine=engine(text, chunk=6, delay_s=0.15)):
        proc = subprocess.Popen([sys.executable, "-m", "kullm.cli", "telegram"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await tg.wait_for(lambda: any(c.method == "deleteWebhook" for c in tg.calls), 60)
            msg = await tg.mention(GROUP, ALICE, "죽어도 답해 줘")
            # Once the first message was edited its id is in the delivery record (a kill in
            # the millisecond between Telegram's answer and that write would leave the first
            # message orphaned: the Bot API has no idempotency key for sendMessage).
            await tg.wait_for(lambda: any(len(m.versions) > 1 for m in
                                          tg.replies_to(GROUP, msg.message_id)), 60)
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 30)
            partial = reply_texts(tg, msg)
            async with make_bot() as survivor:
                done, shown = await wait_reply(tg, client, msg)
                assert survivor.deliveries.adopted == 1
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert len(partial[0]) < len(done.text) and text.startswith(done.text)
    assert len(shown) == 1  # the killed process's message was finished, not sent again
    assert not tg.violations


async def test_stop_waits_for_replies_in_progress_within_the_grace_period(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    async with make_worker(engine=engine("끝까지 보내고 멈춥니다. " * 4, delay_s=0.05)):
        async with make_bot(grace_s=30):
            msg = await tg.send_text(ALICE.id, ALICE, "질문")
            await tg.wait_for(lambda: any(tg.drafts.values()))
        done = await done_of(client, msg)
        assert reply_texts(tg, msg) == expected_texts(done)  # finished before stop returned
    assert await client.redis.keys("*:tg:rrec:*") == []
