"""A fake G-Eval judge: an OpenAI-compatible `/v1/chat/completions` on 127.0.0.1 whose scores
are a pure function of the response text in the prompt, written in varying styles (the card's
form, prose with "4/5", JSON), and that fails the way real servers do when told to."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from kullm.eval.judge import CRITERIA

_RESPONSE = re.compile(r"\nResponse:\n(.*)\n\nEvaluation Form \(scores ONLY\):", re.DOTALL)


def scores_for(response: str) -> dict[str, float]:
    """The scores the fake gives a response (what the report's means must equal)."""
    return {c: float(1 + hashlib.sha256(f"{c}|{response}".encode()).digest()[0] % 5)
            for c in CRITERIA}


def _styled(response: str, scores: dict[str, float]) -> str:
    style = hashlib.sha256(response.encode()).digest()[1] % 3
    if style == 0:
        return "\n".join(f"- {c} (1-5): {int(v)}" for c, v in scores.items())
    if style == 1:
        parts = ", ".join(f"**{c}**: {int(v)}/5" for c, v in scores.items())
        return f"Here is my evaluation of the response. {parts}. I hope this helps."
    return "```json\n" + json.dumps({c: int(v) for c, v in scores.items()}) + "\n```"


class FakeJudge:
    """`plan`: what the next requests get, in order ("500", "429", "garbage"); then scores."""

    def __init__(self) -> None:
        self.plan: list[str] = []
        self.prompts: list[str] = []
        self.statuses: list[int] = []
        self.url = ""
        self.retry_after = "0"
        self.key = ""
        """When set, requests must carry `Authorization: Bearer <key>` (else 401)."""

    def _refused(self, request: web.Request) -> web.Response | None:
        if self.key and request.headers.get("Authorization") != f"Bearer {self.key}":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        return None

    def scored_prompts(self) -> list[str]:
        return [p for p, s in zip(self.prompts, self.statuses, strict=True) if s == 200]

    async def models(self, request: web.Request) -> web.Response:
        return self._refused(request) or web.json_response(
            {"object": "list", "data": [{"id": "judge"}]})

    async def chat(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        self.prompts.append(prompt)
        step = self.plan.pop(0) if self.plan else "ok"
        if step == "500":
            self.statuses.append(500)
            return web.json_response({"error": {"message": "overloaded"}}, status=500)
        if step == "429":
            self.statuses.append(429)
            return web.json_response({"error": {"message": "rate limited"}}, status=429,
                                     headers={"Retry-After": self.retry_after})
        self.statuses.append(200)
        match = _RESPONSE.search(prompt)
        response = match.group(1) if match else ""
        text = "I cannot rate this." if step == "garbage" else _styled(response,
                                                                       scores_for(response))
        return web.json_response({
            "id": "j1", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
        })


@asynccontextmanager
async def serve_fake_judge() -> AsyncIterator[FakeJudge]:
    fake = FakeJudge()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_get("/v1/models", fake.models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield fake
    finally:
        await runner.cleanup()


def expected_means(records: list[dict[str, Any]]) -> dict[str, float]:
    ok = [r for r in records if r.get("status") == "ok"]
    return {c: round(sum(scores_for(r["response"])[c] for r in ok) / len(ok), 4)
            for c in CRITERIA}


async def _serve_forever(port: int) -> None:
    import asyncio

    fake = FakeJudge()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_get("/v1/models", fake.models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"fake judge on http://127.0.0.1:{port}/v1", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":  # a judge to try `kullm eval` with: python -m tests.eval.fake_judge
    import asyncio
    import sys

    asyncio.run(_serve_forever(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
