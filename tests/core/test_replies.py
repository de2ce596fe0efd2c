"""The reply lifecycle (`kullm_core.replies`) through real Redis and the real worker.

What is asserted is what the user sees in the chat (`tests.core.replies_chat`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from kullm_core.client import CoreClient
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.replies import Deliveries, DeliveryTuning, fold
from kullm_core.settings import Settings
from kullm_core.texts import t
from kullm_core.wire import (
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    QueuedEvent,
    ReplyRecord,
    StartedEvent,
)
from kullm_core.worker import Worker
from tests.conftest import test_settings_for
from tests.core.helpers import CONV, USER, collect
from tests.core.replies_chat import Chat, RecordingPlatform
from tests.core.scripted_worker import spawn, worker_env
from tests.core.valkey_proc import ValkeyProc

ANSWER = "고려대학교는 서울 성북구에 있는 사립 대학교입니다. 1905년에 세워졌습니다."
TUNING = DeliveryTuning(lease_s=1.0, renew_every_s=0.1, rescan_every_s=0.2, tick_s=0.02,
                        placeholder_delay_s=0.0, busy_retry_s=0.05, state_check_s=0.3,
                        grace_s=10.0, redis_retry_max_s=0.2)


def _engine(text: str = ANSWER, delay_s: float = 0.03) -> ScriptedEngine:
    return ScriptedEngine(lambda _r: text, chunk_chars=2, delay_s=delay_s)


def _rec(source: str, text: str = "고려대학교에 대해 알려줘") -> ReplyRecord:
    return ReplyRecord.ask(CONV, USER, source, text, {"chat": "c1"})


@asynccontextmanager
async def _adapter(client: CoreClient, chat: Chat, owner: str) -> AsyncIterator[Deliveries]:
    async with Deliveries(client, RecordingPlatform(chat), TUNING, owner=owner) as d:
        yield d


def _one_message(chat: Chat) -> str:
    [text] = chat.messages.values()
    return text


def _streamed(chat: Chat) -> Callable[[Chat], bool]:
    return lambda c: bool(c.texts("progress"))


# -- the fold -------------------------------------------------------------------------------

def test_the_fold_drops_an_earlier_attempt_and_keeps_partial_text_on_error() -> None:
    f = fold([QueuedEvent(position=3), QueuedEvent(position=2), StartedEvent(attempt=1),
              DeltaEvent(text="첫 ", attempt=1), StartedEvent(attempt=2),
              DeltaEvent(text="늦은", attempt=1), DeltaEvent(text="둘째", attempt=2)])
    assert (f.phase, f.text, f.attempt) == ("streaming", "둘째", 2)
    f.apply(ErrorEvent(kind="timeout"))
    assert (f.phase, f.text, f.note) == ("failed", "둘째", t("error.timeout"))
    stopped = fold([StartedEvent(), DeltaEvent(text="가나"),
                    DoneEvent(text="가나", finish_reason="cancelled")], "en")
    assert (stopped.text, stopped.note) == ("가나", t("stopped", "en"))


# -- delivering -----------------------------------------------------------------------------

async def test_a_reply_streams_into_one_message_and_ends_as_the_answer(
    client: CoreClient, make_worker: Any
) -> None:
    chat = Chat()
    async with make_worker(engine=_engine()), _adapter(client, chat, "a") as a:
        rec = _rec("r-1")
        assert await a.deliver(rec)
        assert not await a.deliver(rec)  # a redelivered platform event
        await a.wait(rec.job_id)
        assert await a.registry.job_ids() == []
    assert _one_message(chat) == ANSWER
    assert chat.kinds()[-1] == "finish" and chat.kinds().count("finish") == 1
    assert all(ANSWER.startswith(p) for p in chat.texts("progress"))


async def test_a_second_question_waits_behind_the_first_and_gets_its_own_answer(
    client: CoreClient, make_worker: Any
) -> None:
    chat = Chat()
    second = "두 번째 답입니다."
    replies = iter([ANSWER, second])  # one conversation: answered in order
    engine = ScriptedEngine(lambda _r: next(replies), chunk_chars=2, delay_s=0.02)
    async with make_worker(engine=engine), _adapter(client, chat, "a") as a:
        first, then = _rec("r-11a", "첫째 질문"), _rec("r-11b", "둘째 질문")
        await a.deliver(first)
        await a.deliver(then)
        await a.wait(first.job_id)
        await a.wait(then.job_id)
    assert sorted(chat.messages.values()) == sorted([ANSWER, second])
    [behind] = [m for m, seen in chat.by_message.items() if ("waiting", "behind") in seen]
    assert chat.messages[behind] == second


async def test_a_question_to_another_replica_still_waits_behind_the_first(
    client: CoreClient, make_worker: Any
) -> None:
    chat = Chat()
    second = "두 번째 답입니다."
    replies = iter([ANSWER, second])
    engine = ScriptedEngine(lambda _r: next(replies), chunk_chars=2, delay_s=0.02)
    first, then = _rec("r-12a", "첫째 질문"), _rec("r-12b", "둘째 질문")
    async with _adapter(client, chat, "a") as a, _adapter(client, chat, "b") as b:
        await a.deliver(first)  # queued; no worker yet, so it waits
        await b.deliver(then)  # another replica: nothing of this conversation in flight there
        async with make_worker(engine=engine):
            await a.wait(first.job_id)
            await b.wait(then.job_id)
    waits = {chat.messages[m]: [t for k, t in seen if k == "waiting"]
             for m, seen in chat.by_message.items()}
    assert waits == {ANSWER: ["#1"], second: ["behind"]}


async def test_a_restarted_adapter_resumes_the_reply_in_the_same_message(
    client: CoreClient, make_worker: Any
) -> None:
    chat = Chat()
    async with make_worker(engine=_engine()):
        async with _adapter(client, chat, "a") as a:
            rec = _rec("r-2")
            await a.deliver(rec)
            await chat.until(_streamed(chat))
            await a.stop(0)  # hand back, as on SIGTERM with no grace left
        assert await a.registry.job_ids() == [rec.job_id]
        async with _adapter(client, chat, "b") as b:
            await b.wait(rec.job_id)
            assert b.adopted == 1
    assert _one_message(chat) == ANSWER
    assert chat.kinds().count("finish") == 1


async def test_replies_in_flight_finish_within_the_grace(
    client: CoreClient, make_worker: Any
) -> None:
    chat = Chat()
    async with make_worker(engine=_engine()), _adapter(client, chat, "a") as a:
        await a.deliver(_rec("r-3"))
        await chat.until(_streamed(chat))
        await a.stop(10)
        assert await a.registry.job_ids() == []
    assert _one_message(chat) == ANSWER


async def test_a_worker_dying_mid_reply_restarts_the_text(
    client: CoreClient, make_worker: Any, settings: Settings
) -> None:
    first = "죽는 워커가 쓰던 답입니다. " * 20
    proc = spawn("dying", worker_env(settings.redis.url, settings.model.path, reply=first,
                                     chunk=2, delay_s=0.05))
    chat = Chat()
    try:
        async with _adapter(client, chat, "a") as a:
            rec = _rec("r-4")
            await a.deliver(rec)
            await chat.until(lambda c: any(len(p) > 4 for p in c.texts("progress")))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            async with make_worker(engine=_engine()):
                await a.wait(rec.job_id)
    finally:
        proc.kill()
    assert _one_message(chat) == ANSWER
    shown = chat.texts("progress")
    assert any(first.startswith(p) for p in shown)  # the first attempt was on screen...
    later = shown[next(i for i, p in enumerate(shown) if ANSWER.startswith(p)):]
    assert all(ANSWER.startswith(p) for p in later)  # ...and none of it after the restart


async def test_a_full_queue_shows_the_place_then_the_answer(
    redis: Redis, settings: Settings, make_worker: Any, tmp_path: Path
) -> None:
    s = test_settings_for(settings.redis.url, Path(settings.model.path), tmp_path,
                          queue={"max_pending": 1})
    chat = Chat()
    other = CONV.model_copy(update={"chat": "c2"})
    async with CoreClient(redis, s) as client, _adapter(client, chat, "a") as a:
        ahead = await client.submit(other, USER, "먼저 온 질문", "r-5a")
        assert ahead.status == "queued"
        rec = _rec("r-5")
        await a.deliver(rec)
        await chat.until(lambda c: "#2" in c.texts("waiting"))
        async with make_worker(engine=_engine(), settings=s):
            await a.wait(rec.job_id)
    assert _one_message(chat) == ANSWER
    assert "notice" not in chat.kinds()


async def test_stop_drops_a_question_waiting_for_room(
    redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    s = test_settings_for(settings.redis.url, Path(settings.model.path), tmp_path,
                          queue={"max_pending": 1})
    chat = Chat()
    other = CONV.model_copy(update={"chat": "c2"})
    async with CoreClient(redis, s) as client, _adapter(client, chat, "a") as a:
        await client.submit(other, USER, "먼저 온 질문", "r-10a")
        rec = _rec("r-10")
        await a.deliver(rec)
        await chat.until(lambda c: "#2" in c.texts("waiting"))
        assert await a.stop_conversation(CONV) is None  # nothing was being written
        await a.wait(rec.job_id)
        assert await a.registry.job_ids() == []
    assert _one_message(chat) == t("stopped")
    assert await client.job_state(rec.job_id, rec.source_id) == "never"


async def test_an_expired_reply_stream_is_answered_from_the_history(
    client: CoreClient, make_worker: Any
) -> None:
    chat = Chat()
    rec = _rec("r-6")
    async with _adapter(client, chat, "a") as a:
        await a.deliver(rec)
        await chat.until(lambda c: "#1" in c.texts("waiting"))
        await a.stop(0)  # the adapter goes down with the question in line
    async with make_worker(engine=_engine()):
        events = await collect(client, rec.job_id)
    assert events[-1].type == "done"
    await client.redis.delete(client.keys.reply(rec.job_id))  # down longer than reply_ttl_s
    async with _adapter(client, chat, "b") as b:
        await b.wait(rec.job_id)
    assert _one_message(chat) == ANSWER
    assert chat.kinds() == ["waiting", "finish"]


async def test_a_second_replica_takes_over_a_lapsed_lease_and_the_first_lets_go(
    client: CoreClient, make_worker: Any
) -> None:
    chat = Chat()
    async with make_worker(engine=_engine(delay_s=0.05)), _adapter(client, chat, "a") as a:
        rec = _rec("r-7")
        await a.deliver(rec)
        await chat.until(_streamed(chat))
        # Replica a paused past its lease (GC, network): the lease lapsed.
        await client.redis.delete(a.registry.lease_key(rec.job_id))
        async with _adapter(client, chat, "b") as b:
            await chat.until(lambda c: "finish" in c.kinds())
            await b.wait(rec.job_id)
            assert (a.delivered, b.delivered) == (0, 1)
    assert _one_message(chat) == ANSWER
    assert chat.kinds().count("finish") == 1


async def test_stop_ends_the_reply_with_the_stopped_note(
    client: CoreClient, make_worker: Any
) -> None:
    chat = Chat()
    long = ANSWER * 20
    async with make_worker(engine=_engine(long)), _adapter(client, chat, "a") as a:
        rec = _rec("r-8")
        await a.deliver(rec)
        await chat.until(_streamed(chat))
        assert await a.stop_conversation(CONV) == rec.job_id
        await a.wait(rec.job_id)
        assert await a.stop_conversation(CONV) is None
    text = _one_message(chat)
    note = t("stopped")
    assert text.endswith(note) and long.startswith(text.removesuffix(note))
    assert len(text) < len(long)


async def test_a_redis_blip_mid_reply_leaves_the_reply_complete(
    client: CoreClient, make_worker: Any, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    chat = Chat()
    killer = Redis.from_url(redis_url)
    async with make_worker(engine=_engine(delay_s=0.05)), _adapter(client, chat, "a") as a:
        rec = _rec("r-9")
        await a.deliver(rec)
        await chat.until(_streamed(chat))
        assert await killer.execute_command("CLIENT", "KILL", "TYPE", "normal") >= 1
        await a.wait(rec.job_id)
    await killer.aclose()
    assert _one_message(chat) == ANSWER
    assert "fail" not in chat.kinds()
    assert any(r.name == "kullm_core.streams" and "failed" in r.getMessage()
               for r in caplog.records)  # the blip did cut the reply's reader


async def test_an_outage_mid_reply_is_one_warning_one_recovery_line_and_the_whole_answer(
    valkey: ValkeyProc, settings: Settings, tiny_tokenizer: Any, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kullm_core")
    s = test_settings_for(valkey.url, Path(settings.model.path), tmp_path)
    r = Redis.from_url(valkey.url)
    chat, engine, stop = Chat(), _engine(delay_s=0.05), asyncio.Event()

    def outage_lines() -> list[logging.LogRecord]:  # the deliveries' own guard ("test replies")
        return [x for x in caplog.records if x.name == "kullm_core.redis_checks"
                and x.getMessage().startswith("test replies:")]

    async with engine, CoreClient(r, s) as client:
        worker = asyncio.create_task(Worker(s, r, engine, tiny_tokenizer, "wo").run(stop))
        async with _adapter(client, chat, "a") as a:
            rec = _rec("r-20")
            await a.deliver(rec)
            await chat.until(_streamed(chat))
            valkey.kill()
            async with asyncio.timeout(30):
                while not outage_lines():
                    await asyncio.sleep(0.02)
            valkey.start()
            await a.wait(rec.job_id)
        stop.set()
        await worker
    await r.aclose()
    assert _one_message(chat) == ANSWER
    assert [x.levelname for x in outage_lines()] == ["WARNING", "INFO"]
    assert "recovered" in outage_lines()[1].getMessage()


async def test_refusals_are_one_notice_and_leave_nothing_behind(client: CoreClient) -> None:
    chat = Chat()
    async with _adapter(client, chat, "a") as a:
        retry = ReplyRecord.ask(CONV, USER, "r-12", "", {}, kind="retry")
        assert await a.deliver(retry)  # nothing to regenerate yet
        assert await a.deliver(_rec("r-13", "   "))  # nothing to answer
        assert await a.registry.job_ids() == []
    assert chat.seen == [("notice", t("nothing_to_retry")),
                         ("notice", t("error.bad_input"))]


async def test_forget_drops_the_records_of_the_users_replies(client: CoreClient) -> None:
    chat = Chat()
    async with _adapter(client, chat, "a") as a:
        rec = _rec("r-14")
        await a.deliver(rec)  # no worker: the question stays in line
        await chat.until(lambda c: "#1" in c.texts("waiting"))
        await a.stop(0)
    assert await a.forget_user(USER.platform, "someone-else") == 0
    assert await a.forget_user(USER.platform, USER.id) == 1
    assert await a.registry.job_ids() == []
    assert not await client.redis.exists(a.registry.record_key(rec.job_id))
