"""A fake Telegram Bot API server on 127.0.0.1 that speaks the real wire protocol.

`POST /bot<token>/<method>` with form-encoded (or JSON) parameters, answers
`{"ok": true, "result": ...}` or `{"ok": false, "error_code", "description", "parameters"}`
like Telegram. It enforces the published flood limits (per chat, per group, overall) with
429 + `retry_after`, and Telegram's refusals ("message is not modified", "can't parse
entities", "message is too long", "message text is empty"). Formatting is checked as
Telegram checks it, the whole call refused: entities of an unknown type, outside the text,
or missing what their type needs (a `text_link`'s absolute URL, a `text_mention`'s user, a
`custom_emoji`'s id), and `parse_mode` MarkdownV2 or HTML text with an unescaped reserved
character, an entity never closed or an unknown tag. It records what users see: the bot's
messages with their current text and entities, every edit (text and entities), drafts and
chat actions. Reply markups are checked as Telegram checks them (`telegram_markup`: an inline
keyboard's shape, `callback_data` of 1-64 bytes); a press is a `callback_query` update and
must be answered once with `answerCallbackQuery` (`toast` reads the answer).

Users act through `send_text`, `send_sticker`, `press`, `press_button`...; updates go out through
`getUpdates` long polling, or to a webhook once `setWebhook` is called.

The fake is layered: `telegram_model` (chats, users, messages, calls, flood limits),
`telegram_users` (the state, what users do and see), `telegram_methods` (the Bot API on
messages), `telegram_updates` (getUpdates and webhooks) and here `FakeTelegram`, the server:
routing, parameters, errors and the flood limits.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

from aiohttp import web

from tests.fakes.telegram_format import ApiError
from tests.fakes.telegram_methods import TelegramMethods
from tests.fakes.telegram_model import (
    BOT,
    BOT_ID,
    BOT_USERNAME,
    COUNTED,
    TOKEN,
    Call,
    Chat,
    FakeLimits,
    Msg,
    User,
)
from tests.fakes.telegram_updates import TelegramUpdates

JSON_FIELDS = frozenset({
    "entities", "reply_parameters", "reply_markup", "commands", "scope", "allowed_updates",
    "link_preview_options", "message_ids",
})


class FakeTelegram(TelegramMethods, TelegramUpdates):
    """The server and the users' side of Telegram. Use as `async with FakeTelegram() as tg`."""

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        app.router.add_get("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self._closing = True  # pending long polls answer now, not at their timeout
        await self._notify()
        if self._webhook_task:
            self._webhook_task.cancel()
            await asyncio.gather(self._webhook_task, return_exceptions=True)
        if self._runner:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        """For `telegram.base_url` (the token is appended by the client)."""
        return f"http://127.0.0.1:{self.port}/bot"

    # -- the Bot API: routing, parameters, errors ------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return self._error(ApiError(401, "Unauthorized"))
        params = await self._params(request)
        call = Call(method, params, time.monotonic())
        self.calls.append(call)
        # Waiters see a call as it arrives: a long-polling getUpdates answers only later.
        await self._notify()
        try:
            handler = getattr(self, f"api_{method}", None)
            if handler is None:
                raise ApiError(404, "Not Found")
            if method in COUNTED and self.gateway_errors > 0:
                self.gateway_errors -= 1
                raise ApiError(502, "Bad Gateway")
            if method in COUNTED:
                self._flood_check(method, int(params["chat_id"]), call)
            result = await handler(params)
        except ApiError as exc:
            call.error = f"{exc.code} {exc.description}"
            await self._notify()
            return self._error(exc)
        await self._notify()
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _error(exc: ApiError) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": exc.code, "description": exc.description}
        if exc.retry_after is not None:
            body["parameters"] = {"retry_after": exc.retry_after}
        return web.json_response(body, status=exc.code)

    @staticmethod
    async def _params(request: web.Request) -> dict[str, Any]:
        if request.content_type == "application/json":
            return dict(await request.json())
        out: dict[str, Any] = {}
        for key, value in (await request.post()).items():
            text = str(value)
            out[key] = json.loads(text) if key in JSON_FIELDS else text
        out.update(request.query)
        return out

    # -- flood limits ----------------------------------------------------------------------

    def _flood_check(self, method: str, chat_id: int, call: Call) -> None:
        now = call.at
        blocked = self._blocked_until.get(chat_id, 0.0)
        if now < blocked:  # called again before the retry_after we asked for
            self.violations.append(call)
            raise self._too_many(chat_id, now, max(1, math.ceil(blocked - now)))
        forced = self.forced_429.get(chat_id)
        if forced:
            raise self._too_many(chat_id, now, forced.popleft())
        lim = self.limits
        chat = self._per_chat[chat_id]
        windows = [(chat, 1, lim.chat_interval_s), (self._global, lim.global_limit,
                                                    lim.global_period_s)]
        if chat_id < 0:
            windows.append((chat, lim.group_limit, lim.group_period_s))
        for stamps, limit, period in windows:
            inside = [t for t in stamps if t > now - period]
            if len(inside) >= limit:
                wait = inside[-limit] + period - now
                self.violations.append(call)
                raise self._too_many(chat_id, now, max(1, math.ceil(wait)))
        chat.append(now)
        self._global.append(now)
        horizon = now - max(lim.group_period_s, lim.chat_interval_s, lim.global_period_s)
        while chat and chat[0] <= horizon:
            chat.popleft()
        while self._global and self._global[0] <= horizon:
            self._global.popleft()

    def _too_many(self, chat_id: int, now: float, retry_after: int) -> ApiError:
        self._blocked_until[chat_id] = max(self._blocked_until.get(chat_id, 0.0), now + retry_after)
        return ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after)


__all__ = ["BOT", "BOT_ID", "BOT_USERNAME", "COUNTED", "TOKEN", "ApiError", "Call", "Chat",
           "FakeLimits", "FakeTelegram", "Msg", "User"]
