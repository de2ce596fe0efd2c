"""The worker under Redis trouble: outages, a blip mid-reply, NOGROUP, OOM, evicting servers,
managed servers without CONFIG, and SIGTERM with a large backlog."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from kullm_core.client import CoreClient
from kullm_core.engine.base import EngineOutput, GenerationRequest
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.errors import EvictionPolicyError
from kullm_core.keys import GROUP, Keys
from kullm_core.redis_checks import Outage
from kullm_core.settings import Settings
from kullm_core.wire import ConversationRef, Job
from kullm_core.worker import Worker
from tests.conftest import test_settings_for
from tests.core.helpers import CONV, USER, ask, collect, deltas_text, done
from tests.core.scripted_worker import spawn, worker_env
from tests.core.valkey_proc import ValkeyProc

SCRIPT = "천천히 오는 답변입니다 " * 8


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="kullm_core")
    return caplog


def _outage_lines(caplog: pytest.LogCaptureFixture, level: int, what: str) -> list[str]:
    return [m for r in caplog.records if r.name == "kullm_core.redis_checks"
            and r.levelno == level and what in (m := r.getMessage())]


async def _until(cond: Callable[[], bool | Awaitable[bool]], timeout: float = 30) -> None:
    """Wait for a condition to hold (checked every 20 ms), failing after `timeout`."""
    async with asyncio.timeout(timeout):
        while True:
            ok = cond()
            if ok if isinstance(ok, bool) else await ok:
                return
            await asyncio.sleep(0.02)


@asynccontextmanager
async def _running(settings: Settings, redis: Redis, tokenizer: Any, engine: Any,
                   ) -> AsyncIterator[tuple[Worker, asyncio.Task[None]]]:
    w = Worker(settings, redis, engine, tokenizer, "wf")
    stop = asyncio.Event()
    async with engine:
        task = asyncio.create_task(w.run(stop))
        try:
            yield w, task
        finally:
            stop.set()
            await task


class _Slow(ScriptedEngine):
    """Streams SCRIPT slowly; `finished` is set when a generation has streamed to its end."""

    def __init__(self) -> None:
        super().__init__(lambda _r: SCRIPT, chunk_chars=2, delay_s=0.03)
        self.finished = asyncio.Event()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[EngineOutput]:
        async for out in super().generate(request):
            if out.finish_reason:
                self.finished.set()
            yield out


def _slow() -> _Slow:
    return _Slow()


def test_backoff_grows_is_bounded_and_is_logged_once(logs: pytest.LogCaptureFixture) -> None:
    outage = Outage("unavailable", "worker t")
    delays = [outage.failed(ConnectionError("refused"), "reading") for _ in range(12)]
    assert 0.05 <= delays[0] <= 0.1 and all(2.5 <= d <= 5.0 for d in delays[-4:])
    # a caller that just joined the outage starts with a short wait of its own
    assert 0.05 <= outage.failed(ConnectionError("refused"), "committing", tries=1) <= 0.1
    outage.ok()
    assert len(_outage_lines(logs, logging.WARNING, "unavailable")) == 1
    [summary] = _outage_lines(logs, logging.INFO, "recovered")
    assert "(13 failed calls)" in summary


async def test_an_idle_worker_waits_out_an_outage_and_serves_after_it(
    valkey: ValkeyProc, settings: Settings, tiny_tokenizer: Any, tmp_path: Path,
    logs: pytest.LogCaptureFixture,
) -> None:
    s = test_settings_for(valkey.url, Path(settings.model.path), tmp_path)
    r = Redis.from_url(valkey.url)
    engine = ScriptedEngine(lambda _r: "네, 알겠습니다.", chunk_chars=3)
    async with _running(s, r, tiny_tokenizer, engine) as (_w, task), CoreClient(r, s) as client:
        assert (await ask(client, "첫 질문", "out-1")).text == "네, 알겠습니다."
        valkey.kill()
        await _until(lambda: bool(_outage_lines(logs, logging.WARNING, "unavailable")))
        valkey.start()
        assert (await ask(client, "두 번째 질문", "out-2")).text == "네, 알겠습니다."
        assert not task.done()  # it never exited
        await _until(lambda: bool(_outage_lines(logs, logging.INFO, "recovered")))
    assert len(_outage_lines(logs, logging.WARNING, "")) == 1  # one line for the whole outage
    assert len(_outage_lines(logs, logging.INFO, "recovered")) == 1
    assert [t.user for t in await client.history(CONV)] == ["첫 질문", "두 번째 질문"]
    await r.aclose()


async def test_a_blip_mid_reply_neither_restarts_it_nor_costs_an_attempt(
    valkey: ValkeyProc, settings: Settings, tiny_tokenizer: Any, tmp_path: Path,
    logs: pytest.LogCaptureFixture,
) -> None:
    s = test_settings_for(valkey.url, Path(settings.model.path), tmp_path,
                          generation={"max_new_tokens": 500})
    r = Redis.from_url(valkey.url)
    async with _running(s, r, tiny_tokenizer, _slow()), CoreClient(r, s) as client:
        sub = await client.submit(CONV, USER, "긴 답을 해줘", "blip-1")
        async for _, e in client.events(sub.job_id):
            if e.type == "delta":
                break
        valkey.kill()
        await _until(lambda: bool(_outage_lines(logs, logging.WARNING, "unavailable")))
        valkey.start()
        events = await collect(client, sub.job_id)
    final = done(events)
    assert [e.type for e in events].count("started") == 1 and final.attempt == 1
    assert final.text == SCRIPT and deltas_text(events) == SCRIPT
    assert [t.assistant for t in await client.history(CONV)] == [SCRIPT]
    await r.aclose()


async def test_an_emptied_server_gets_its_consumer_group_back(
    redis: Redis, client: CoreClient, settings: Settings, make_worker: Any,
    logs: pytest.LogCaptureFixture,
) -> None:
    engine = ScriptedEngine(lambda _r: "그룹이 돌아왔어요", chunk_chars=3)
    async with make_worker(engine=engine) as w:
        await _until(lambda: any(": ready" in r.getMessage() for r in logs.records))
        await redis.flushall()  # what a failover to an empty replica looks like
        await _until(lambda: any("consumer group was missing" in r.getMessage()
                                 for r in logs.records))
        await redis.xgroup_destroy(Keys().jobs, GROUP)
        await _until(lambda: sum("consumer group was missing" in r.getMessage()
                                 for r in logs.records) >= 2)
        assert (await ask(client, "아직 거기 있나요?", "ng-1")).text == "그룹이 돌아왔어요"
        assert w.id in [c["name"].decode() for c in
                        await redis.xinfo_consumers(Keys().jobs, GROUP)]


async def test_out_of_memory_holds_the_reply_until_memory_is_freed(
    redis: Redis, client: CoreClient, settings: Settings, make_worker: Any, tmp_path: Path,
    logs: pytest.LogCaptureFixture,
) -> None:
    s = test_settings_for(settings.redis.url, Path(settings.model.path), tmp_path,
                          generation={"max_new_tokens": 500})
    engine = _slow()
    try:
        async with make_worker(engine=engine, settings=s):
            sub = await client.submit(CONV, USER, "메모리가 가득 찼을 때", "oom-1")
            async for _, e in client.events(sub.job_id):
                if e.type == "delta":
                    break
            await redis.config_set("maxmemory", 1)  # noeviction: every write is refused
            await _until(lambda: bool(_outage_lines(logs, logging.WARNING, "out of memory")))
            await asyncio.wait_for(engine.finished.wait(), 30)  # generated; its writes held
            await redis.config_set("maxmemory", 0)
            events = await collect(client, sub.job_id)
            assert (await ask(client, "이제 괜찮나요?", "oom-2")).text == SCRIPT
    finally:
        await redis.config_set("maxmemory", 0)
    final = done(events)
    assert final.attempt == 1 and final.text == SCRIPT and deltas_text(events) == SCRIPT
    assert len(await client.history(CONV)) == 2
    assert len(_outage_lines(logs, logging.WARNING, "out of memory")) == 1
    assert len(_outage_lines(logs, logging.INFO, "out of memory")) == 1  # its summary


async def test_an_evicting_server_is_refused_unless_allowed(
    redis: Redis, client: CoreClient, settings: Settings, make_worker: Any, tmp_path: Path,
    tiny_tokenizer: Any, tiny_engine: Any, logs: pytest.LogCaptureFixture,
) -> None:
    await redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        w = Worker(settings, redis, tiny_engine, tiny_tokenizer)
        refusal = r"`allkeys-lru`.*`redis\.allow_eviction = true`"
        with pytest.raises(EvictionPolicyError, match=refusal):
            await w.run(asyncio.Event())
        allowed = test_settings_for(settings.redis.url, Path(settings.model.path), tmp_path,
                                    redis={"allow_eviction": True})
        engine = ScriptedEngine(lambda _r: "조심해서 답합니다", chunk_chars=3)
        async with make_worker(engine=engine, settings=allowed):
            assert (await ask(client, "괜찮을까요?", "ev-1")).text == "조심해서 답합니다"
    finally:
        await redis.config_set("maxmemory-policy", "noeviction")
    [warning] = [r.getMessage() for r in logs.records if "WILL BE LOST" in r.getMessage()]
    assert "allkeys-lru" in warning


async def test_a_server_without_config_access_is_used_with_one_warning(
    redis: Redis, settings: Settings, tiny_tokenizer: Any, tmp_path: Path,
    logs: pytest.LogCaptureFixture,
) -> None:
    """Managed services often disable CONFIG: the worker says so once and serves."""
    await redis.acl_setuser("managed", enabled=True, passwords=["+secret"], keys=["*"],
                            channels=["*"], commands=["+@all", "-config"])
    path = redis.connection_pool.connection_kwargs["path"]
    limited = Redis(unix_socket_path=path, username="managed", password="secret")
    try:
        engine = ScriptedEngine(lambda _r: "관리형 서버", chunk_chars=3)
        async with _running(settings, limited, tiny_tokenizer, engine), CoreClient(
            limited, settings
        ) as client:
            assert (await ask(client, "CONFIG 없이", "cfg-1")).text == "관리형 서버"
    finally:
        await limited.aclose()
        await redis.acl_deluser("managed")
    lines = [r.getMessage() for r in logs.records if "cannot read maxmemory-policy" in
             r.getMessage()]
    assert len(lines) == 1 and "noeviction" in lines[0]


@pytest.mark.slow
async def test_sigterm_with_a_backlog_of_hundreds_exits_within_its_grace(
    redis: Redis, settings: Settings, make_worker: Any, tmp_path: Path
) -> None:
    """300 messages in ten conversations, most of them waiting behind their conversation's
    previous reply: SIGTERM stops the worker within its grace; the next worker answers all,
    in order."""
    s = test_settings_for(settings.redis.url, Path(settings.model.path), tmp_path,
                          queue={"max_pending": 1000})
    convs = [ConversationRef(platform="test", chat=f"flood{i}") for i in range(10)]
    sent = {c.key: [f"{c.chat} {n}" for n in range(30)] for c in convs}
    async with CoreClient(redis, s) as client:
        for n in range(30):
            for c in convs:
                await client.submit(c, USER, sent[c.key][n], f"{c.chat}-{n}")
        env = worker_env(settings.redis.url, settings.model.path, reply=SCRIPT, delay_s=0.2,
                         QUEUE__SHUTDOWN_GRACE_S="1", QUEUE__MAX_PENDING="1000")
        proc = spawn("flooded", env, stderr=subprocess.PIPE)
        try:
            await _until(lambda: _holds(redis, "flooded", 60), timeout=60)
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 60)
            err = proc.stderr.read().decode() if proc.stderr else ""
        finally:
            proc.kill()
        assert code == 0 and "handed back" in err
        fast = ScriptedEngine(lambda _r: "짧게", chunk_chars=5)
        async with make_worker(engine=fast, settings=s):
            for c in convs:
                done(await collect(client, Job.id_for(f"{c.chat}-29"), timeout=120))
        histories = {c.key: [t.user for t in await client.history(c)] for c in convs}
    assert histories == sent


async def _holds(redis: Redis, consumer: str, n: int) -> bool:
    info: Any = await redis.xpending_range(Keys().jobs, GROUP, "-", "+", 1000)
    return sum(1 for p in info if p["consumer"] == consumer.encode()) >= n


@pytest.mark.parametrize("where", ["taking jobs", "heartbeating"])
async def test_a_worker_cancelled_mid_call_stops_even_when_redis_py_reports_an_error(
    redis: Redis, redis_url: str, settings: Settings, tiny_tokenizer: Any, where: str,
) -> None:
    """A cancel landing in a Redis call can come out of redis-py as a connection error; a loop
    that took it for an outage would keep the cancelled worker running."""
    blocking = Redis.from_url(redis_url)  # no socket timeout: the read waits for the cancel
    engine = ScriptedEngine(lambda _r: "네.", chunk_chars=3)
    w = Worker(settings, redis, engine, tiny_tokenizer, "wc")
    blocked = asyncio.Event()

    async def call(*_args: Any) -> Any:
        blocked.set()
        try:
            return await blocking.blpop([f"never-pushed-{where}"], timeout=30)
        except asyncio.CancelledError:
            raise RedisConnectionError("Connection closed by server.") from None

    if where == "taking jobs":
        w.queue.read = call  # type: ignore[method-assign]
    else:
        w.heartbeat = call  # type: ignore[method-assign]
    stop = asyncio.Event()
    async with engine:
        task = asyncio.create_task(w.run(stop))
        await asyncio.wait_for(blocked.wait(), 30)
        task.cancel()
        finished, _ = await asyncio.wait([task], timeout=30)
        stop.set()  # without the fix: lets the test end
        await asyncio.gather(task, return_exceptions=True)
    await blocking.aclose()
    assert finished == {task}
    assert task.cancelled()
