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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.telegram_format import ApiError, check_entity, parse_markup
from tests.fakes.telegram_markup import buttons, check_reply_markup
from tests.fakes.telegram_model import (
    BOT,
    BOT_ID,
    BOT_USERNAME,
    TOKEN,
    Chat,
    FakeLimits,
    Msg,
    User,
)

MAX_TEXT = 4096
# Methods that put or change a message on screen: they count against the flood limits.
COUNTED = frozenset({"sendMessage", "editMessageText", "sendMessageDraft"})
JSON_FIELDS = frozenset({
    "entities", "reply_parameters", "reply_markup", "commands", "scope", "allowed_updates",
    "link_preview_options", "message_ids",
})
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    error: str = ""


class FakeTelegram:
    """The server and the users' side of Telegram. Use as `async with FakeTelegram() as tg`."""

    def __init__(self, limits: FakeLimits | None = None, token: str = TOKEN) -> None:
        self.limits = limits or FakeLimits()
        self.token = token
        self.chats: dict[int, Chat] = {}
        self.msgs: dict[tuple[int, int], Msg] = {}
        self._next_id: dict[int, int] = defaultdict(int)
        self.updates: list[dict[str, Any]] = []
        self._again: list[dict[str, Any]] = []
        self._next_update = 1
        self.confirmed = 0
        self.calls: list[Call] = []
        self.violations: list[Call] = []
        self.drafts: dict[tuple[int, int], list[str]] = defaultdict(list)
        self.draft_formats: dict[tuple[int, int], list[list[dict[str, Any]]]] = defaultdict(list)
        """The entities of each draft in `drafts`."""
        self.actions: list[tuple[int, str, float]] = []
        self.commands: dict[str, list[dict[str, str]]] = {}
        self.answered_callbacks: list[dict[str, Any]] = []
        self.callback_queries: set[str] = set()
        # Fault injection.
        self.reject_entities = False
        self.drafts_supported = True
        self.gateway_errors = 0
        """Answer this many counted calls with 502 Bad Gateway (a proxy hiccup)."""
        self.forced_429: dict[int, deque[int]] = defaultdict(deque)
        # Flood accounting: receive times of counted calls.
        self._per_chat: dict[int, deque[float]] = defaultdict(deque)
        self._global: deque[float] = deque()
        self._blocked_until: dict[int, float] = {}
        self.webhook: dict[str, Any] | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.port = 0

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

    # -- users' side -----------------------------------------------------------------------

    def chat(self, chat_id: int, type_: str = "", title: str = "", forum: bool = False) -> Chat:
        if chat_id not in self.chats:
            kind = type_ or ("private" if chat_id > 0 else "supergroup")
            self.chats[chat_id] = Chat(chat_id, kind, title, forum)
        return self.chats[chat_id]

    def _new_msg(self, chat: Chat, sender: User, **kw: Any) -> Msg:
        self._next_id[chat.id] += 1
        msg = Msg(chat, self._next_id[chat.id], sender, **kw)
        self.msgs[(chat.id, msg.message_id)] = msg
        return msg

    async def user_message(
        self, chat_id: int, user: User, text: str = "", *, reply_to: int | None = None,
        thread_id: int | None = None, entities: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None, kind: str = "message",
    ) -> Msg:
        """A user posts (or, with kind='edited_message', edits) a message; queues its update."""
        chat = self.chat(chat_id, title=user.first_name if chat_id > 0 else "")
        msg = self._new_msg(chat, user, text=text, entities=list(entities or []),
                            thread_id=thread_id, reply_to=reply_to, extra=dict(extra or {}))
        msg.update_id = await self.push_update({kind: msg.json(self.msgs)})
        return msg

    async def send_text(self, chat_id: int, user: User, text: str, **kw: Any) -> Msg:
        return await self.user_message(chat_id, user, text, **kw)

    async def mention(self, chat_id: int, user: User, text: str, **kw: Any) -> Msg:
        """`@bot text` with the mention entity Telegram would add."""
        full = f"@{BOT_USERNAME} {text}"
        ent = {"type": "mention", "offset": 0, "length": len(BOT_USERNAME) + 1}
        return await self.user_message(chat_id, user, full, entities=[ent], **kw)

    async def command(self, chat_id: int, user: User, text: str, **kw: Any) -> Msg:
        name = text.split()[0]
        ent = {"type": "bot_command", "offset": 0, "length": len(name)}
        return await self.user_message(chat_id, user, text, entities=[ent], **kw)

    async def send_sticker(self, chat_id: int, user: User, **kw: Any) -> Msg:
        sticker = {"file_id": "CAAC-sticker", "file_unique_id": "AgAD", "type": "regular",
                   "width": 512, "height": 512, "is_animated": False, "is_video": False,
                   "emoji": "😀"}
        return await self.user_message(chat_id, user, extra={"sticker": sticker}, **kw)

    async def send_photo(self, chat_id: int, user: User, caption: str = "", **kw: Any) -> Msg:
        photo = [{"file_id": "AgAC-photo", "file_unique_id": "AQAD", "width": 90, "height": 90}]
        extra: dict[str, Any] = {"photo": photo}
        if caption:
            extra["caption"] = caption
        return await self.user_message(chat_id, user, extra=extra, **kw)

    async def press_button(self, msg: Msg, user: User, data: str) -> str:
        """`user` presses a button with `data` under `msg` (any data: a forged or stale
        press too); returns the callback query's id."""
        query_id = f"cq{self._next_update}"
        self.callback_queries.add(query_id)
        await self.push_update({"callback_query": {
            "id": query_id, "from": user.json(), "chat_instance": str(msg.chat.id),
            "message": msg.json(self.msgs), "data": data,
        }})
        return query_id

    async def press(self, msg: Msg, user: User, label: str) -> str:
        """`user` presses the button labelled `label` on `msg` as it shows now."""
        data = next((d for text, d in buttons(msg.reply_markup) if text == label), None)
        if data is None:
            raise AssertionError(f"no button {label!r} on message {msg.message_id}: "
                                 f"{buttons(msg.reply_markup)}")
        return await self.press_button(msg, user, data)

    def toast(self, query_id: str) -> dict[str, Any] | None:
        """The bot's answerCallbackQuery to a press (None: not answered yet)."""
        return next((a for a in self.answered_callbacks
                     if a.get("callback_query_id") == query_id), None)

    async def push_update(self, body: dict[str, Any]) -> int:
        update = {"update_id": self._next_update, **body}
        self._next_update += 1
        self.updates.append(update)
        await self._notify()
        return int(update["update_id"])

    async def redeliver(self, update_id: int) -> None:
        """Send an already delivered update again (Telegram does after a timeout/restart)."""
        original = next(u for u in self.updates if u["update_id"] == update_id)
        if self.webhook:
            await self.post_to_webhook(original, self.webhook.get("secret_token"))
        else:
            self._again.append(dict(original))
            await self._notify()

    # -- what users see --------------------------------------------------------------------

    def bot_messages(self, chat_id: int, thread_id: int | None = None) -> list[Msg]:
        return [
            m for (c, _), m in sorted(self.msgs.items())
            if c == chat_id and m.from_bot and not m.deleted
            and (thread_id is None or m.thread_id == thread_id)
        ]

    def replies_to(self, chat_id: int, message_id: int) -> list[Msg]:
        """The bot's visible messages answering one user message: the one replying to it
        and the continuations chained to that one."""
        out: list[Msg] = []
        want = message_id
        for m in self.bot_messages(chat_id):
            if m.reply_to == want:
                out.append(m)
                want = m.message_id
        return out

    def counted_calls(self, chat_id: int | None = None) -> list[Call]:
        return [
            c for c in self.calls if c.method in COUNTED and not c.error.startswith("429")
            and (chat_id is None or int(c.params.get("chat_id", 0)) == chat_id)
        ]

    async def wait_for(self, predicate: Any, within: float = 30.0) -> None:
        """Wait until `predicate()` holds (checked after every call and every user action)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), within)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- the Bot API -----------------------------------------------------------------------

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

    def _check_thread(self, chat: Chat, thread: Any) -> int | None:
        if not thread:
            return None
        if not chat.is_forum and chat.type != "private":
            raise ApiError(400, "Bad Request: message thread not found")
        return int(thread)

    def _check_text(self, text: str, entities: list[dict[str, Any]], parse_mode: str) -> str:
        """The text the message shows (a parse mode's markup removed; the entities it makes
        are not recorded), or the refusal Telegram gives."""
        if parse_mode:
            text = parse_markup(text, parse_mode)
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        length = len(text.encode("utf-16-le")) // 2
        if length > MAX_TEXT:
            raise ApiError(400, "Bad Request: message is too long")
        if (entities or parse_mode) and self.reject_entities:
            raise ApiError(400, "Bad Request: can't parse entities: Unsupported start tag "
                                "\"b\" at byte offset 0")
        for e in entities:
            check_entity(e, length)
        return text

    def _target_chat(self, params: dict[str, Any]) -> Chat:
        chat = self.chats.get(int(params["chat_id"]))
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        return chat

    async def api_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**BOT.json(), "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}

    async def api_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._target_chat(params)
        text, entities = str(params.get("text", "")), list(params.get("entities") or [])
        text = self._check_text(text, entities, str(params.get("parse_mode", "")))
        reply = params.get("reply_parameters") or {}
        thread = self._check_thread(chat, params.get("message_thread_id"))
        check_reply_markup(params.get("reply_markup"))
        msg = self._new_msg(
            chat, BOT, text=text, entities=entities, thread_id=thread,
            reply_to=reply.get("message_id"), reply_markup=params.get("reply_markup"),
            versions=[text], formats=[entities],
        )
        return msg.json(self.msgs)

    async def api_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._target_chat(params)
        msg = self.msgs.get((chat.id, int(params["message_id"])))
        if msg is None or msg.deleted:
            raise ApiError(400, "Bad Request: message to edit not found")
        if not msg.from_bot:
            raise ApiError(400, "Bad Request: message can't be edited")
        text, entities = str(params.get("text", "")), list(params.get("entities") or [])
        text = self._check_text(text, entities, str(params.get("parse_mode", "")))
        markup = params.get("reply_markup")
        check_reply_markup(markup)
        if markup is not None and "inline_keyboard" not in markup:
            raise ApiError(400, "Bad Request: inline keyboard expected")
        if text == msg.text and entities == msg.entities and markup == msg.reply_markup:
            raise ApiError(400, NOT_MODIFIED)
        msg.text, msg.entities, msg.reply_markup = text, entities, markup
        msg.versions.append(text)
        msg.formats.append(entities)
        return msg.json(self.msgs)

    async def api_sendMessageDraft(self, params: dict[str, Any]) -> bool:
        chat = self._target_chat(params)
        if not self.drafts_supported or chat.type != "private":
            raise ApiError(400, "Bad Request: TEXTDRAFT_PEER_INVALID")
        text, entities = str(params.get("text", "")), list(params.get("entities") or [])
        if text:
            text = self._check_text(text, entities, str(params.get("parse_mode", "")))
        self.drafts[(chat.id, int(params["draft_id"]))].append(text)
        self.draft_formats[(chat.id, int(params["draft_id"]))].append(entities)
        return True

    async def api_sendChatAction(self, params: dict[str, Any]) -> bool:
        chat = self._target_chat(params)
        self.actions.append((chat.id, str(params.get("action")), time.monotonic()))
        return True

    async def api_deleteMessage(self, params: dict[str, Any]) -> bool:
        chat = self._target_chat(params)
        msg = self.msgs.get((chat.id, int(params["message_id"])))
        if msg is None or msg.deleted:
            raise ApiError(400, "Bad Request: message to delete not found")
        msg.deleted = True
        return True

    async def api_setMyCommands(self, params: dict[str, Any]) -> bool:
        self.commands[str(params.get("language_code") or "")] = list(params["commands"])
        return True

    async def api_getMyCommands(self, params: dict[str, Any]) -> list[dict[str, str]]:
        return self.commands.get(str(params.get("language_code") or ""), [])

    async def api_answerCallbackQuery(self, params: dict[str, Any]) -> bool:
        query = str(params.get("callback_query_id") or "")
        if query not in self.callback_queries:
            raise ApiError(400, "Bad Request: query is too old and response timeout expired or "
                                "query ID is invalid")
        if any(a.get("callback_query_id") == query for a in self.answered_callbacks):
            raise ApiError(400, "Bad Request: query is too old and response timeout expired or "
                                "query ID is invalid")
        if len(str(params.get("text") or "")) > 200:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        self.answered_callbacks.append(params)
        return True

    async def api_editMessageReplyMarkup(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._target_chat(params)
        msg = self.msgs.get((chat.id, int(params["message_id"])))
        if msg is None or msg.deleted:
            raise ApiError(400, "Bad Request: message to edit not found")
        markup = params.get("reply_markup")
        check_reply_markup(markup)
        if markup == msg.reply_markup:
            raise ApiError(400, NOT_MODIFIED)
        msg.reply_markup = markup
        return msg.json(self.msgs)

    async def api_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active;"
                                " use deleteWebhook to delete the webhook first")
        offset = int(params.get("offset") or 0)
        if offset:
            self.confirmed = max(self.confirmed, offset - 1)
        limit = int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)

        def pending() -> list[dict[str, Any]]:
            fresh = [u for u in self.updates if u["update_id"] > self.confirmed]
            return (self._again + fresh)[:limit]

        if not pending() and timeout > 0:
            with contextlib.suppress(TimeoutError):
                await self.wait_for(lambda: bool(pending()) or self._closing, timeout)
        batch = pending()
        self._again = [u for u in self._again if u not in batch]
        return batch

    async def api_setWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = {"url": params["url"], "secret_token": params.get("secret_token")}
        if self._webhook_task is None or self._webhook_task.done():
            self._webhook_task = asyncio.create_task(self._push_webhook())
        return True

    async def api_deleteWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = None
        if params.get("drop_pending_updates") in ("true", True):
            self.confirmed = self._next_update - 1
        return True

    async def api_getWebhookInfo(self, params: dict[str, Any]) -> dict[str, Any]:
        pending = len([u for u in self.updates if u["update_id"] > self.confirmed])
        return {"url": (self.webhook or {}).get("url", ""), "has_custom_certificate": False,
                "pending_update_count": pending}

    # -- webhook delivery ------------------------------------------------------------------

    async def post_to_webhook(
        self, update: dict[str, Any], secret: str | None, url: str | None = None
    ) -> int:
        """POST one update to the webhook (or to `url`, e.g. one replica behind a load
        balancer) as Telegram does; returns the HTTP status."""
        target = url or (self.webhook or {}).get("url")
        if not target:
            raise RuntimeError("no webhook set")
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        async with aiohttp.ClientSession() as http, http.post(
            target, data=json.dumps(update), headers=headers
        ) as resp:
            return resp.status

    def forge_update(self, chat_id: int, user: User, text: str) -> tuple[Msg, dict[str, Any]]:
        """An update Telegram never sent (for requests without the right secret)."""
        chat = self.chat(chat_id, title=user.first_name)
        msg = self._new_msg(chat, user, text=text)
        return msg, {"update_id": 10**9 + msg.message_id, "message": msg.json(self.msgs)}

    def update_of(self, msg: Msg) -> dict[str, Any]:
        return next(u for u in self.updates if u["update_id"] == msg.update_id)

    async def _push_webhook(self) -> None:
        while self.webhook:
            todo = [u for u in self.updates if u["update_id"] > self.confirmed]
            if not todo:
                await self.wait_for(
                    lambda: not self.webhook
                    or any(u["update_id"] > self.confirmed for u in self.updates), 3600)
                continue
            try:
                status = await self.post_to_webhook(todo[0], self.webhook.get("secret_token"))
            except aiohttp.ClientError:
                status = 0
            if status == 200:
                self.confirmed = max(self.confirmed, int(todo[0]["update_id"]))
                await self._notify()
            else:
                await asyncio.sleep(0.2)  # Telegram retries failed deliveries later


__all__ = ["BOT", "BOT_ID", "BOT_USERNAME", "TOKEN", "ApiError", "Chat", "FakeLimits",
           "FakeTelegram", "Msg", "User"]
