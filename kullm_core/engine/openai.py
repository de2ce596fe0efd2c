"""Engine that forwards to an OpenAI-compatible server (vLLM, TGI, SGLang...).

The worker still builds the conversation (system prompt + fitted, sanitized history); this
engine sends those messages to `/chat/completions` with `stream: true` and yields the deltas.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from kullm_core.engine.base import EngineBase, EngineOutput, GenerationRequest
from kullm_core.errors import ModelLoadError
from kullm_core.settings import ModelSettings

log = logging.getLogger(__name__)

_FINISH = {"stop": "stop", "length": "length", "eos": "stop", "eos_token": "stop"}


class OpenAIEngine(EngineBase):
    """`Engine` over a streaming Chat Completions endpoint."""

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout_s: float = 60.0,
                 slots: int = 128):
        self.slots = slots
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self._cancelled: set[str] = set()

    @classmethod
    def from_settings(cls, m: ModelSettings) -> OpenAIEngine:
        return cls(m.openai_base_url, m.openai_model, m.openai_api_key.get_secret_value(),
                   m.openai_timeout_s, m.openai_concurrency)

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        slots = self.slots or 128
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=slots + 8, max_keepalive_connections=slots),
        )
        try:
            await self._check_server()
        except BaseException:
            await self.stop()
            raise

    async def _check_server(self) -> None:
        """Before saying ready: the endpoint answers, accepts the key and serves the model."""
        assert self._client is not None
        where = f"{self.base_url}/models (setting model.openai_base_url)"
        try:
            resp = await self._client.get("/models", timeout=10.0)
        except httpx.HTTPError as exc:
            raise ModelLoadError(
                f"openai engine: cannot reach {where}: {type(exc).__name__} {exc}".rstrip()
            ) from None
        if resp.status_code in (401, 403):
            raise ModelLoadError(f"openai engine: {where} rejected the API key "
                                 "(setting model.openai_api_key)")
        if resp.status_code >= 400:
            raise ModelLoadError(f"openai engine: {where} answered {resp.status_code}")
        try:
            served = [str(m.get("id")) for m in resp.json().get("data", [])]
        except (ValueError, AttributeError):
            served = []
        if served and self.model not in served:
            log.warning("openai engine: the server serves %s, not %s (setting "
                        "model.openai_model)", ", ".join(served[:5]), self.model)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def cancel(self, request_id: str) -> None:
        self._cancelled.add(request_id)

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        p = request.params
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p if not p.greedy else 1.0,
        }
        if p.stop_strings:
            body["stop"] = list(p.stop_strings)
        if p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty  # vLLM/SGLang extension
        if p.seed is not None:
            body["seed"] = p.seed
        return body

    async def generate(self, request: GenerationRequest) -> AsyncIterator[EngineOutput]:
        if self._client is None:
            raise RuntimeError("engine not started")
        finish: str | None = None
        async with self._client.stream(
            "POST", "/chat/completions", json=self._body(request)
        ) as resp:
            if resp.status_code >= 400:
                detail = (await resp.aread()).decode("utf-8", "replace")[:300]
                raise RuntimeError(
                    f"OpenAI-compatible server answered {resp.status_code}: {detail}"
                )
            async for line in resp.aiter_lines():
                if request.id in self._cancelled:
                    self._cancelled.discard(request.id)
                    yield EngineOutput("", 0, "cancelled")
                    return
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        yield EngineOutput(text, 1)
                    if choice.get("finish_reason"):
                        finish = _FINISH.get(choice["finish_reason"], "stop")
        yield EngineOutput("", 0, finish or "stop")  # type: ignore[arg-type]
