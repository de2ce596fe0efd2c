"""A fake Slack on 127.0.0.1: Web API, signed Events API delivery, Socket Mode websocket.

It enforces Slack's limits (429 + Retry-After, msg_too_long...) and records what people in the
workspace would see: every message with its visible text over time, ephemeral answers, slash
command acknowledgements, reactions and assistant statuses. Tests drive it as users do
(`user_message`, `slash`, `click`, `assistant_thread_started`) and assert on what is visible.

The fake is layered: `slack_state` (constants, `Limits`, `Message`, the recorded state and
its queries), `slack_events` (delivery to the app, what people do), `slack_methods` and
`slack_blocks` (the Web API methods) and here `FakeSlack`, the server: routing, rate limits
and fault injection.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web

from tests.fakes.slack_methods import SlackMethods
from tests.fakes.slack_state import (
    APP_ID,
    APP_TOKEN,
    BOT_ID,
    BOT_TOKEN,
    BOT_USER,
    SIGNING_SECRET,
    TEAM,
    Limits,
    Message,
)


class FakeSlack(SlackMethods):
    """See module doc. Use as `async with FakeSlack(mode="socket") as fake:`."""

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeSlack:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/ws", self._ws)
        app.router.add_post("/response/{n}", self._response_url)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = next(a[1] for a in self._runner.addresses if isinstance(a, tuple))
        self.url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for ws in list(self._sockets):
            await ws.close()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    # -- fault injection -------------------------------------------------------------------

    def fail(self, method: str, times: int = 1, error: str = "ratelimited",
             status: int = 429, retry_after: float = 1.0, processed: bool = False) -> None:
        """The next `times` calls of `method` fail. `processed`: Slack did the work before
        failing (a lost response), so a blind retry would duplicate it."""
        self._faults[method].extend([(error, status, retry_after, processed)] * times)

    # -- Web API routing and rate limits ---------------------------------------------------

    def _limit(self, key: str, rule: tuple[int, float]) -> float | None:
        count, window = rule
        now = time.monotonic()
        q = self._windows[key]
        while q and q[0] <= now - (window - self.limits.tolerance_s):
            q.popleft()
        if len(q) >= count:
            return max(1.0, math.ceil(q[0] + window - now))
        q.append(now)
        return None

    async def _api(self, request: web.Request) -> web.Response:
        try:
            return await self._call(request)
        finally:
            await self._notify()

    async def _call(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await _args(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        token = token or str(args.get("token", ""))
        self.calls.append((time.monotonic(), method))
        want = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != want:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if self._faults.get(method):
            error, status, retry_after, processed = self._faults[method].pop(0)
            self.injected[method] += 1
            if processed and handler is not None:
                handler(args)
                await self._notify()
            headers = {"Retry-After": str(int(retry_after))} if status == 429 else {}
            return web.json_response({"ok": False, "error": error}, status=status,
                                     headers=headers)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        rule = _RULES.get(method)
        if rule is not None:
            key = {"post_per_channel": f"post:{args.get('channel', '')}",
                   "stream_per_team": "stream"}.get(rule, method)
            wait = self._limit(key, getattr(self.limits, rule))
            if wait is not None:
                self.violations[method] += 1
                return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                         headers={"Retry-After": str(int(wait))})
        return web.json_response(handler(args))

    async def _response_url(self, request: web.Request) -> web.Response:
        data = await request.json()
        data["n"] = request.match_info["n"]
        self.responses.append(data)
        await self._notify()
        return web.json_response({"ok": True})


_RULES = {
    "chat.postMessage": "post_per_channel", "chat.startStream": "post_per_channel",
    "chat.update": "update_per_team", "chat.appendStream": "stream_per_team",
    "chat.stopStream": "stream_per_team", "chat.delete": "tier3", "reactions.add": "tier3",
    "reactions.remove": "tier3",
    "conversations.replies": "tier3", "conversations.history": "tier3",
    "chat.postEphemeral": "tier4", "assistant.threads.setStatus": "tier4",
    "assistant.threads.setSuggestedPrompts": "tier4", "users.info": "tier4",
    "views.open": "tier4", "views.publish": "tier4", "chat.getPermalink": "tier4",
    "usergroups.users.list": "tier2",
}


async def _args(request: web.Request) -> dict[str, Any]:
    args: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        args |= await request.json()
    elif request.can_read_body:
        args |= dict(parse_qsl(await request.text()))
    return args


__all__ = ["APP_ID", "APP_TOKEN", "BOT_ID", "BOT_TOKEN", "BOT_USER", "SIGNING_SECRET", "TEAM",
           "FakeSlack", "Limits", "Message"]
