"""Engine that forwards to an OpenAI-compatible server (vLLM, SGLang, TGI...).

Two wire modes (`model.openai_api`):

- `completions` (default): streams `/completions` with the worker's own prompt token ids, so the
  server sees exactly the prompt the local engine would (the worker's template, system prompt
  mode, sanitized and fitted history), with every sampling setting. vLLM and SGLang take
  `prompt` as a list of token ids; the server must serve the tokenizer of `model.path`.
- `chat`: sends the same conversation as `messages` to `/chat/completions`; the server renders
  its own chat template. For servers that cannot take token ids.

Token counts come from the server's usage (`stream_options`), never from counting chunks:
one chunk may carry several tokens (a Hangul syllable spread over byte tokens arrives whole).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx

from kullm_core.engine.base import EngineBase, EngineOutput, GenerationRequest
from kullm_core.errors import ConfigError, ModelLoadError
from kullm_core.settings import GenerationSettings, ModelSettings

log = logging.getLogger(__name__)

_FINISH = {"stop": "stop", "length": "length", "eos": "stop", "eos_token": "stop"}
OpenAIApi = Literal["completions", "chat"]


def refuse_ngram_ban(no_repeat_ngram_size: int) -> None:
    """No OpenAI-compatible server has an n-gram ban: vLLM only via a custom logits processor
    loaded into the server (its `vllm_xargs`), SGLang not at all. Refuse it rather than drop it."""
    if no_repeat_ngram_size > 0:
        raise ConfigError(
            f"generation.no_repeat_ngram_size = {no_repeat_ngram_size} is not supported by the "
            "openai engine (vLLM/SGLang have no n-gram ban): set it to 0 or use "
            'model.engine = "local"')


class _Usage:
    """Completion tokens of one stream: from the server's usage (cumulative per chunk with
    vLLM's `continuous_usage_stats`, else the last chunk); one per text chunk only when the
    server sends no usage at all."""

    def __init__(self) -> None:
        self.counted = 0
        self.chunks = 0
        self.seen = False

    def take(self, chunk: dict[str, Any], has_text: bool) -> int:
        """Tokens to report with this chunk."""
        self.chunks += has_text
        usage = chunk.get("usage")
        if not isinstance(usage, dict) or "completion_tokens" not in usage:
            return 0
        self.seen = True
        new = max(0, int(usage["completion_tokens"]) - self.counted)
        self.counted += new
        return new

    def rest(self) -> int:
        """Tokens not yet reported when the stream ends."""
        if self.seen:
            return 0
        log.warning("openai engine: the server sent no usage; counting one token per chunk")
        return self.chunks


class OpenAIEngine(EngineBase):
    """`Engine` over a streaming (Chat) Completions endpoint."""

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout_s: float = 60.0,
                 slots: int = 128, api: OpenAIApi = "completions",
                 no_repeat_ngram_size: int = 0):
        self.slots = slots
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.api: OpenAIApi = api
        self.name = f"openai ({api})"
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self._client: httpx.AsyncClient | None = None
        self._cancelled: set[str] = set()

    @classmethod
    def from_settings(cls, m: ModelSettings, g: GenerationSettings | None = None
                      ) -> OpenAIEngine:
        return cls(m.openai_base_url, m.openai_model, m.openai_api_key.get_secret_value(),
                   m.openai_timeout_s, m.openai_concurrency, m.openai_api,
                   g.no_repeat_ngram_size if g is not None else 0)

    async def start(self) -> None:
        refuse_ngram_ban(self.no_repeat_ngram_size)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        slots = self.slots or 128
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=slots + 8, max_keepalive_connections=slots),
        )
        try:
            await self._check_server()
            if self.api == "completions":
                await self._check_token_prompts()
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

    async def _check_token_prompts(self) -> None:
        """One token generated from a one-token prompt: a server that cannot take token ids
        is found at start, not at every reply."""
        assert self._client is not None
        body = {"model": self.model, "prompt": [1], "max_tokens": 1, "temperature": 0.0}
        try:
            resp = await self._client.post("/completions", json=body)
        except httpx.HTTPError as exc:
            raise ModelLoadError(f"openai engine: {self.base_url}/completions: "
                                 f"{type(exc).__name__} {exc}".rstrip()) from None
        if resp.status_code >= 400:
            raise ModelLoadError(
                f"openai engine: {self.base_url}/completions refused a token-id prompt "
                f"({resp.status_code}: {resp.text[:200]}); a server without token-id "
                'prompts needs model.openai_api = "chat"')

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def cancel(self, request_id: str) -> None:
        self._cancelled.add(request_id)

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        p = request.params
        body: dict[str, Any] = {"model": self.model}
        if self.api == "completions":
            body["prompt"] = list(request.prompt_ids)
        else:
            body["messages"] = request.messages
        body.update({
            "stream": True,
            # continuous_usage_stats (vLLM, SGLang): the running count in every chunk
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p if not p.greedy else 1.0,
            "repetition_penalty": p.repetition_penalty,  # vLLM/SGLang extension
            "stop": list(p.stop_strings),
            "seed": p.seed,  # null: the server draws one
        })
        return body

    @staticmethod
    def _text(choice: dict[str, Any]) -> str:
        if "text" in choice:  # completions
            return str(choice.get("text") or "")
        return str((choice.get("delta") or {}).get("content") or "")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[EngineOutput]:
        if self._client is None:
            raise RuntimeError("engine not started")
        if request.params.no_repeat_ngram_size:
            refuse_ngram_ban(request.params.no_repeat_ngram_size)
        path = "/completions" if self.api == "completions" else "/chat/completions"
        finish: str | None = None
        usage = _Usage()
        # Leaving this block before the end closes the connection: vLLM and SGLang abort a
        # request whose client went away, so a cancel frees the server's slot too.
        async with self._client.stream("POST", path, json=self._body(request)) as resp:
            if resp.status_code >= 400:
                detail = (await resp.aread()).decode("utf-8", "replace")[:300]
                raise RuntimeError(
                    f"OpenAI-compatible server answered {resp.status_code}: {detail}"
                )
            # aiter_lines decodes UTF-8 incrementally: a Hangul syllable whose bytes arrive in
            # two reads is joined before the JSON is parsed.
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
                text = "".join(self._text(c) for c in chunk.get("choices") or [])
                tokens = usage.take(chunk, bool(text))
                if text or tokens:
                    yield EngineOutput(text, tokens)
                for choice in chunk.get("choices") or []:
                    if choice.get("finish_reason"):
                        finish = _FINISH.get(choice["finish_reason"], "stop")
        yield EngineOutput("", usage.rest(), finish or "stop")  # type: ignore[arg-type]
