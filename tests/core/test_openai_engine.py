"""The OpenAI-compatible engine against a small streaming Chat Completions server on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kullm_core.client import CoreClient
from kullm_core.engine.loader import resolve_model_path
from kullm_core.engine.openai import OpenAIEngine
from kullm_core.errors import ModelLoadError
from kullm_core.settings import Settings
from kullm_core.worker import Worker
from tests.conftest import test_settings_for
from tests.core.helpers import CONV, USER, ask, collect, deltas_text, done

REPLY = ["안녕", "하세요", "! 구름", "입니다", "."]


class FakeOpenAI:
    """Speaks `/v1/chat/completions` with `stream: true` (server-sent events)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.url = ""

    async def models(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") == "Bearer wrong":
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"object": "list", "data": [{"id": "kullm3"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if body.get("model") != "kullm3":
            return web.json_response({"error": {"message": "model not found"}}, status=404)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        pieces = REPLY[: body["max_tokens"]]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            finish = ("stop" if len(pieces) == len(REPLY) else "length") if last else None
            chunk = {"id": "c1", "object": "chat.completion.chunk", "model": body["model"],
                     "choices": [{"index": 0, "delta": {"content": piece},
                                  "finish_reason": finish}]}
            await resp.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_get("/v1/models", fake.models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}/v1"
    yield fake
    await runner.cleanup()


def _settings(settings: Settings, tmp_path: Path, url: str, model: str = "kullm3") -> Settings:
    return test_settings_for(
        settings.redis.url, Path(settings.model.path), tmp_path,
        model={"engine": "openai", "openai_base_url": url, "openai_model": model},
        generation={"max_new_tokens": 100, "repetition_penalty": 1.2, "stop_strings": ["###"]},
    )


async def test_worker_forwards_the_fitted_conversation_and_streams_back(
    client: CoreClient, make_worker: Any, settings: Settings, tmp_path: Path,
    fake_openai: FakeOpenAI,
) -> None:
    s = _settings(settings, tmp_path, fake_openai.url)
    async with make_worker(engine=OpenAIEngine.from_settings(s.model), settings=s):
        first = await ask(client, "첫 질문 [INST] </s>", "o1")
        sub = await client.submit(CONV, USER, "둘째 질문", "o2")
        events = await collect(client, sub.job_id)
    assert first.text == "안녕하세요! 구름입니다."
    assert deltas_text(events) == done(events).text == first.text
    body = fake_openai.requests[-1]
    assert body["stream"] is True and body["repetition_penalty"] == 1.2
    assert body["stop"] == ["###"] and body["model"] == "kullm3"
    roles = [m["role"] for m in body["messages"]]
    # no system message: the server's chat template adds KULLM3's default, as the card's usage
    assert roles == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == "첫 질문 [\u2060INST] <\u2060/s>"
    assert body["messages"][1]["content"] == first.text


async def test_server_error_becomes_a_failed_reply_not_a_crash(
    client: CoreClient, make_worker: Any, settings: Settings, tmp_path: Path,
    fake_openai: FakeOpenAI,
) -> None:
    s = _settings(settings, tmp_path, fake_openai.url, model="missing")
    s = s.model_copy(update={"queue": s.queue.model_copy(update={"max_attempts": 1,
                                                                 "reclaim_idle_s": 0.6})})
    async with make_worker(engine=OpenAIEngine.from_settings(s.model), settings=s):
        sub = await client.submit(CONV, USER, "hi", "err1")
        events = await collect(client, sub.job_id)
    assert events[-1].type == "error" and events[-1].kind == "failed"


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


async def test_start_checks_the_endpoint_before_saying_ready(fake_openai: FakeOpenAI) -> None:
    async with OpenAIEngine(fake_openai.url, "kullm3"):
        pass  # answers /models, serves the model
    with pytest.raises(ModelLoadError, match=r"cannot reach .*model\.openai_base_url"):
        await OpenAIEngine(_closed_port_url(), "kullm3").start()
    with pytest.raises(ModelLoadError, match="rejected the API key"):
        await OpenAIEngine(fake_openai.url, "kullm3", api_key="wrong").start()


def test_unreachable_server_at_start_is_one_line_not_a_traceback(
    settings: Settings, tmp_path: Path
) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("KULLM_")}
    env.update({"KULLM_REDIS__URL": settings.redis.url, "KULLM_DATA_DIR": str(tmp_path),
                "KULLM_MODEL__PATH": settings.model.path, "KULLM_MODEL__ENGINE": "openai",
                "KULLM_MODEL__OPENAI_BASE_URL": _closed_port_url()})
    out = subprocess.run([sys.executable, "-m", "kullm.cli", "worker"], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "kullm: error: openai engine: cannot reach" in out.stderr


async def test_worker_concurrency_follows_the_engine(
    settings: Settings, client: CoreClient, tiny_tokenizer: Any, tiny_engine: Any
) -> None:
    remote = OpenAIEngine.from_settings(settings.model)
    assert settings.model.openai_concurrency == 128 > settings.batching.max_batch_size
    assert Worker(settings, client.redis, remote, tiny_tokenizer).capacity == 128
    assert Worker(settings, client.redis, tiny_engine, tiny_tokenizer).capacity == (
        settings.batching.max_batch_size)


def test_openai_engine_never_falls_back_to_the_tiny_tokenizer(
    settings: Settings, tmp_path: Path
) -> None:
    s = test_settings_for(settings.redis.url, tmp_path / "no-such-model", tmp_path,
                          model={"engine": "openai", "path": "nlpai-lab/not-downloaded"})
    with pytest.raises(ModelLoadError, match="hf download nlpai-lab/not-downloaded"):
        resolve_model_path(s)
    assert not (tmp_path / "tiny-model").exists()
