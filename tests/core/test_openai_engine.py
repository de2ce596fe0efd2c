"""The OpenAI-compatible engine against a fake vLLM on loopback: `/completions` with token ids
and `/chat/completions`, both streaming (server-sent events)."""

from __future__ import annotations

import asyncio
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
from kullm_core.engine.base import GenerationRequest, SamplingParams
from kullm_core.engine.loader import resolve_model_path
from kullm_core.engine.openai import OpenAIApi, OpenAIEngine
from kullm_core.errors import ConfigError, ModelLoadError
from kullm_core.settings import Settings
from kullm_core.worker import Worker
from tests.conftest import test_settings_for
from tests.core.helpers import CONV, USER, ask, collect, deltas_text, done

REPLY = ["안녕", "하세요", "! 구름", "입니다", "."]
REPLY_TOKENS = [1, 2, 2, 1, 1]
"""Tokens behind each piece: a chunk may carry several (vLLM holds back a syllable's byte
tokens until it is whole), so the engine must take counts from the usage, not the chunks."""
SAMPLING = {"model", "prompt", "stream", "stream_options", "max_tokens", "temperature", "top_p",
            "repetition_penalty", "stop", "seed"}


def _sse(chunk: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()


class FakeOpenAI:
    """Speaks `/v1/models`, `/v1/chat/completions` and `/v1/completions` with `stream: true`
    (server-sent events), as vLLM does. `/completions` checks what it receives: a prompt of
    token ids in the tokenizer's vocabulary and every sampling setting, else 400."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self.token_ids = True       # False: a server whose /completions takes only text
        self.continuous = True      # usage in every chunk (vLLM continuous_usage_stats)
        self.slow = False           # stream for a long time (cancel tests)
        self.vocab = 32000
        self.disconnected = asyncio.Event()

    async def models(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") == "Bearer wrong":
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"object": "list", "data": [{"id": "kullm3"}]})

    def _refusal(self, body: dict[str, Any]) -> str:
        if body.get("model") != "kullm3":
            return "model not found"
        prompt = body.get("prompt")
        if not self.token_ids and not isinstance(prompt, str):
            return "prompt must be a string"
        if not isinstance(prompt, list) or not prompt or not all(
                isinstance(i, int) and 0 <= i < self.vocab for i in prompt):
            return "prompt must be a list of token ids"
        if body.get("stream") and not body.keys() >= SAMPLING:
            return f"missing {sorted(SAMPLING - body.keys())}"
        return ""

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if refusal := self._refusal(body):
            return web.json_response({"error": {"message": refusal}}, status=400)
        if not body.get("stream"):  # the engine's start-up probe
            return web.json_response({"choices": [{"index": 0, "text": "x",
                                                   "finish_reason": "length"}],
                                      "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
        return await self._stream(request, body, lambda piece: {"text": piece})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if body.get("model") != "kullm3":
            return web.json_response({"error": {"message": "model not found"}}, status=404)
        return await self._stream(request, body, lambda piece: {"delta": {"content": piece}})

    async def _stream(self, request: web.Request, body: dict[str, Any],
                      choice: Any) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        pieces = list(zip(REPLY, REPLY_TOKENS, strict=True))
        pieces = pieces * 1000 if self.slow else pieces[: body["max_tokens"]]
        used = 0
        try:
            for i, (piece, tokens) in enumerate(pieces):
                last = i == len(pieces) - 1
                used += tokens
                finish = ("stop" if len(pieces) == len(REPLY) else "length") if last else None
                chunk: dict[str, Any] = {"id": "c1", "model": body["model"], "choices": [
                    {"index": 0, **choice(piece), "finish_reason": finish}]}
                if self.continuous:
                    chunk["usage"] = {"prompt_tokens": 9, "completion_tokens": used}
                data = _sse(chunk)
                cut = data.index("안".encode()) + 1 if "안" in piece else len(data) // 2
                await resp.write(data[:cut])  # a Hangul syllable split over two writes
                await asyncio.sleep(0.002 if self.slow else 0)
                await resp.write(data[cut:])
            await resp.write(_sse({"id": "c1", "choices": [], "usage": {
                "prompt_tokens": len(body.get("prompt") or []), "completion_tokens": used}}))
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return resp


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_post("/v1/completions", fake.completions)
    app.router.add_get("/v1/models", fake.models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}/v1"
    yield fake
    await runner.cleanup()


def _settings(settings: Settings, tmp_path: Path, url: str, model: str = "kullm3",
              api: str = "chat", **generation: Any) -> Settings:
    return test_settings_for(
        settings.redis.url, Path(settings.model.path), tmp_path,
        model={"engine": "openai", "openai_base_url": url, "openai_model": model,
               "openai_api": api},
        generation={"max_new_tokens": 100, "repetition_penalty": 1.2, "stop_strings": ["###"],
                    **generation},
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
    local = Worker(settings, client.redis, tiny_engine, tiny_tokenizer)
    assert local.capacity == tiny_engine.slots == 16


def test_openai_engine_never_falls_back_to_the_tiny_tokenizer(
    settings: Settings, tmp_path: Path
) -> None:
    s = test_settings_for(settings.redis.url, tmp_path / "no-such-model", tmp_path,
                          model={"engine": "openai", "path": "nlpai-lab/not-downloaded"})
    with pytest.raises(ModelLoadError, match="hf download nlpai-lab/not-downloaded"):
        resolve_model_path(s)
    assert not (tmp_path / "tiny-model").exists()


async def test_completions_mode_sends_the_workers_own_prompt_ids_and_every_setting(
    client: CoreClient, make_worker: Any, settings: Settings, tmp_path: Path,
    fake_openai: FakeOpenAI, tiny_tokenizer: Any,
) -> None:
    s = _settings(settings, tmp_path, fake_openai.url, api="completions", temperature=0.7,
                  top_p=0.9, seed=7)
    async with make_worker(engine=OpenAIEngine.from_settings(s.model, s.generation),
                           settings=s):
        first = await ask(client, "첫 질문", "c1")
        sub = await client.submit(CONV, USER, "둘째 질문", "c2")
        events = await collect(client, sub.job_id)
    answer = done(events)
    assert first.text == answer.text == deltas_text(events) == "안녕하세요! 구름입니다."
    assert answer.completion_tokens == sum(REPLY_TOKENS) == 7  # the usage, not 5 chunks
    body = fake_openai.requests[-1]
    started = next(e for e in events if e.type == "started")
    assert len(body["prompt"]) == started.prompt_tokens == answer.prompt_tokens
    rendered = tiny_tokenizer.decode(body["prompt"])
    assert "첫 질문" in rendered and first.text in rendered and "둘째 질문" in rendered
    assert "messages" not in body
    assert {k: body[k] for k in SAMPLING - {"prompt"}} == {
        "model": "kullm3", "stream": True, "max_tokens": 100, "temperature": 0.7,
        "top_p": 0.9, "repetition_penalty": 1.2, "stop": ["###"], "seed": 7,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}}


async def _run(engine: OpenAIEngine, ids: list[int], rid: str = "r1") -> tuple[str, int, str]:
    text, tokens, finish = "", 0, ""
    async for out in engine.generate(GenerationRequest(rid, ids, params=SamplingParams(
            max_new_tokens=100, temperature=0.7, top_p=0.9))):
        text, tokens = text + out.text, tokens + out.tokens
        finish = out.finish_reason or finish
    return text, tokens, finish


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_tokens_come_from_the_final_usage_chunk_too(
    fake_openai: FakeOpenAI, api: OpenAIApi
) -> None:
    fake_openai.continuous = False  # usage only in the last chunk (OpenAI's include_usage)
    async with OpenAIEngine(fake_openai.url, "kullm3", api=api) as engine:
        assert await _run(engine, [1, 5, 6]) == ("안녕하세요! 구름입니다.", 7, "stop")


async def test_cancel_ends_the_stream_and_closes_the_connection(
    fake_openai: FakeOpenAI
) -> None:
    fake_openai.slow = True
    async with OpenAIEngine(fake_openai.url, "kullm3") as engine:
        outs = []
        async for out in engine.generate(GenerationRequest("r9", [1, 5])):
            outs.append(out)
            if len(outs) == 2:
                engine.cancel("r9")
        assert outs[-1].finish_reason == "cancelled" and len(outs) == 3
        await asyncio.wait_for(fake_openai.disconnected.wait(), 30)


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_a_no_repeat_ngram_ban_is_refused_at_start_not_dropped(
    fake_openai: FakeOpenAI, settings: Settings, tmp_path: Path, api: str
) -> None:
    s = _settings(settings, tmp_path, fake_openai.url, api=api, no_repeat_ngram_size=3)
    engine = OpenAIEngine.from_settings(s.model, s.generation)
    with pytest.raises(ConfigError, match=r"generation\.no_repeat_ngram_size = 3 .*openai"):
        await engine.start()
    assert fake_openai.requests == []


async def test_a_server_without_token_id_prompts_is_found_at_start(
    fake_openai: FakeOpenAI
) -> None:
    fake_openai.token_ids = False
    with pytest.raises(ModelLoadError, match=r'refused a token-id prompt .*openai_api = "chat"'):
        await OpenAIEngine(fake_openai.url, "kullm3").start()
    async with OpenAIEngine(fake_openai.url, "kullm3", api="chat") as engine:
        assert (await _run(engine, [1]))[0] == "안녕하세요! 구름입니다."


async def test_stop_mid_reply_closes_the_servers_stream(
    client: CoreClient, make_worker: Any, settings: Settings, tmp_path: Path,
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.slow = True
    s = _settings(settings, tmp_path, fake_openai.url, api="completions", max_new_tokens=1000)
    async with make_worker(engine=OpenAIEngine.from_settings(s.model, s.generation),
                           settings=s):
        sub = await client.submit(CONV, USER, "긴 이야기를 해줘", "stop1")
        events = []
        async for _, e in client.events(sub.job_id):
            events.append(e)
            if e.type == "delta" and [x.type for x in events].count("delta") == 1:
                assert await client.cancel(CONV) == sub.job_id
        await asyncio.wait_for(fake_openai.disconnected.wait(), 30)
    final = done(events)
    assert final.finish_reason == "cancelled" and final.text == deltas_text(events)
    assert final.text and ("".join(REPLY) * 1000).startswith(final.text)
    assert 0 < final.completion_tokens < 1000  # the usage of what came before the stop
