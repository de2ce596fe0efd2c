"""A fake Slack on 127.0.0.1: Web API, signed Events API delivery, Socket Mode websocket.

It enforces Slack's limits (429 + Retry-After, msg_too_long...) and records what people in the
workspace would see: every message with its visible text over time, ephemeral answers, slash
command acknowledgements, reactions and assistant statuses. Tests drive it as users do
(`user_message`, `slash`, `click`, `assistant_thread_started`) and assert on what is visible.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
from aiohttp import web
from slack_sdk.signature import SignatureVerifier

from tests.fakes.slack_blocks import HelpdeskFake, blocks_error

TEAM = "T0KULLM01"
APP_ID = "A0KULLM01"
BOT_USER = "U0KULLMBOT"
BOT_ID = "B0KULLM01"
BOT_TOKEN = "xoxb-fake-bot-token"
APP_TOKEN = "xapp-fake-app-token"
SIGNING_SECRET = "fake-signing-secret"


@dataclass
class Limits:
    """(calls, window seconds). Defaults are Slack's published limits."""

    post_per_channel: tuple[int, float] = (1, 1.0)
    update_per_team: tuple[int, float] = (50, 60.0)
    stream_per_team: tuple[int, float] = (100, 60.0)
    tier2: tuple[int, float] = (20, 60.0)
    tier3: tuple[int, float] = (50, 60.0)
    tier4: tuple[int, float] = (100, 60.0)
    tolerance_s: float = 0.05
    max_text: int = 40000
    max_markdown: int = 12000
    max_stream_chunk: int = 12000
    max_stream_total: int = 40000


@dataclass
class Message:
    channel: str
    ts: str
    user: str
    thread_ts: str | None = None
    bot: bool = False
    text: str = ""
    blocks: list[dict[str, Any]] = field(default_factory=list)
    stream_text: str = ""
    streamed: bool = False
    streaming: bool = False
    metadata: dict[str, Any] | None = None
    deleted: bool = False
    edits: int = 0
    shown: list[tuple[float, str]] = field(default_factory=list)
    """(monotonic time, visible text) after every change."""

    @property
    def visible(self) -> str:
        if self.deleted:
            return ""
        if self.streamed:
            return self.stream_text
        md = [b.get("text", "") for b in self.blocks if b.get("type") == "markdown"]
        return "".join(md) if md else self.text


class FakeSlack(HelpdeskFake):
    """See module doc. Use as `async with FakeSlack(mode="socket") as fake:`."""

    def __init__(self, *, mode: str = "socket", limits: Limits | None = None,
                 ack_timeout_s: float = 3.0, retry_delays: tuple[float, ...] = (0.2, 0.5, 1.0),
                 echo_bot_messages: bool = True, spread_events: bool = False) -> None:
        self.mode = mode
        self.spread_events = spread_events
        """Socket Mode: deal events to the connections in turn (several adapter replicas),
        instead of to the newest one."""
        self.limits = limits or Limits()
        self.ack_timeout_s = ack_timeout_s
        self.retry_delays = retry_delays
        self.echo_bot_messages = echo_bot_messages
        self.app_url = ""
        self.url = ""
        self.locales: dict[str, str] = {}
        self.streaming_error: str | None = None
        self.reject_markdown_blocks = False
        self.messages: list[Message] = []
        self.ephemerals: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self.reactions: list[tuple[str, str, str]] = []
        self.statuses: list[tuple[str, str, str]] = []
        self.prompts: list[dict[str, Any]] = []
        self.calls: list[tuple[float, str]] = []
        self.violations: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.deliveries: list[tuple[str, int, str]] = []
        self._faults: dict[str, list[tuple[str, int, float, bool]]] = defaultdict(list)
        self._windows: dict[str, deque[float]] = defaultdict(deque)
        self._n = 0
        self._last_us = 0
        self._sockets: list[web.WebSocketResponse] = []
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._verifier = SignatureVerifier(SIGNING_SECRET)
        self._init_helpdesk()

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

    # -- observation -----------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0,
                       what: str = "condition") -> None:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        try:
            await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"fake slack: timed out waiting for {what}") from None

    def bot_messages(self, channel: str, thread_ts: str | None = None,
                     after: str = "") -> list[Message]:
        """The bot's live messages in a thread (or, thread_ts None, top level after `after`)."""
        return [m for m in self.messages
                if m.bot and not m.deleted and m.channel == channel and m.thread_ts == thread_ts
                and m.ts > after]

    def reply_text(self, channel: str, thread_ts: str | None = None, after: str = "") -> str:
        return "".join(m.visible for m in self.bot_messages(channel, thread_ts, after))

    def calls_of(self, method: str) -> int:
        return sum(1 for _, m in self.calls if m == method)

    # -- fault injection -------------------------------------------------------------------

    def fail(self, method: str, times: int = 1, error: str = "ratelimited",
             status: int = 429, retry_after: float = 1.0, processed: bool = False) -> None:
        """The next `times` calls of `method` fail. `processed`: Slack did the work before
        failing (a lost response), so a blind retry would duplicate it."""
        self._faults[method].extend([(error, status, retry_after, processed)] * times)

    # -- Web API ---------------------------------------------------------------------------

    def _ts(self) -> str:
        self._n += 1
        # Real Slack ts are the posting time (microseconds, unique per channel): quoted
        # thread messages are ordered among the bot's turns by them.
        self._last_us = max(int(time.time() * 1_000_000), self._last_us + 1)
        return f"{self._last_us // 1_000_000}.{self._last_us % 1_000_000:06d}"

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

    def _find(self, channel: str, ts: str) -> Message | None:
        return next((m for m in self.messages if m.channel == channel and m.ts == ts
                     and not m.deleted), None)

    def _content_error(self, text: str, blocks: list[dict[str, Any]]) -> str | None:
        md = [b for b in blocks if b.get("type") == "markdown"]
        if md and self.reject_markdown_blocks:
            return "invalid_blocks"
        if sum(len(b.get("text", "")) for b in md) > self.limits.max_markdown:
            return "msg_blocks_too_long"
        if len(text) > self.limits.max_text:
            return "msg_too_long"
        if not text and not blocks:
            return "no_text"
        why = blocks_error(blocks) if blocks else None
        if why:
            self.block_errors.append(why)
            return "invalid_blocks"
        return None

    def _m_auth_test(self, a: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "kullm",
                "team_id": TEAM, "user_id": BOT_USER, "bot_id": BOT_ID,
                "is_enterprise_install": False}

    def _m_apps_connections_open(self, a: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.url.replace("http", "ws") + "/ws"}

    def _m_chat_postMessage(self, a: dict[str, Any]) -> dict[str, Any]:
        blocks = _json(a.get("blocks")) or []
        error = self._content_error(str(a.get("text") or ""), blocks)
        if error:
            return {"ok": False, "error": error}
        msg = Message(a["channel"], self._ts(), BOT_USER, a.get("thread_ts") or None, True,
                      str(a.get("text") or ""), blocks, metadata=_json(a.get("metadata")))
        self._add(msg)
        self._echo(msg)
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def _m_chat_update(self, a: dict[str, Any]) -> dict[str, Any]:
        msg = self._find(a["channel"], a["ts"])
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        blocks = _json(a.get("blocks"))
        error = self._content_error(str(a.get("text") or ""), blocks or [])
        if error:
            return {"ok": False, "error": error}
        msg.text, msg.blocks, msg.streamed, msg.streaming = str(a.get("text") or ""), \
            blocks or [], False, False
        self._shown(msg, edit=True)
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def _stream_text(self, a: dict[str, Any]) -> str:
        chunks = _json(a.get("chunks")) or []
        text = "".join(c.get("text", "") for c in chunks if c.get("type") == "markdown_text")
        return str(a.get("markdown_text") or "") + text

    def _m_chat_startStream(self, a: dict[str, Any]) -> dict[str, Any]:
        if self.streaming_error:
            return {"ok": False, "error": self.streaming_error}
        if not a.get("thread_ts"):
            return {"ok": False, "error": "invalid_arguments"}
        if not str(a["channel"]).startswith("D") and not a.get("recipient_user_id"):
            return {"ok": False, "error": "missing_recipient_user_id"}
        text = self._stream_text(a)
        if len(text) > self.limits.max_stream_chunk:
            return {"ok": False, "error": "msg_too_long"}
        msg = Message(a["channel"], self._ts(), BOT_USER, a["thread_ts"], True,
                      stream_text=text, streamed=True, streaming=True)
        self._add(msg)
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def _stream_op(self, a: dict[str, Any], stop: bool) -> dict[str, Any]:
        msg = self._find(a["channel"], a["ts"])
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        if not msg.streaming:
            return {"ok": False, "error": "message_not_in_streaming_state"}
        text = self._stream_text(a)
        if len(text) > self.limits.max_stream_chunk or \
                len(msg.stream_text) + len(text) > self.limits.max_stream_total:
            return {"ok": False, "error": "msg_too_long"}
        blocks = (_json(a.get("blocks")) or []) if stop else []
        why = blocks_error(blocks) if blocks else None
        if why:
            self.block_errors.append(why)
            return {"ok": False, "error": "invalid_blocks"}
        msg.stream_text += text
        msg.streaming = not stop
        if stop:
            msg.metadata = _json(a.get("metadata"))
            msg.blocks = blocks  # appended after the streamed text
        self._shown(msg, edit=bool(text or blocks))
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def _m_chat_appendStream(self, a: dict[str, Any]) -> dict[str, Any]:
        return self._stream_op(a, stop=False)

    def _m_chat_stopStream(self, a: dict[str, Any]) -> dict[str, Any]:
        return self._stream_op(a, stop=True)

    def _m_chat_delete(self, a: dict[str, Any]) -> dict[str, Any]:
        msg = self._find(a["channel"], a["ts"])
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        msg.deleted = True
        self._shown(msg, edit=True)
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def _m_chat_postEphemeral(self, a: dict[str, Any]) -> dict[str, Any]:
        self.ephemerals.append({"channel": a["channel"], "user": a["user"],
                                "text": a.get("text", ""), "thread_ts": a.get("thread_ts")})
        return {"ok": True, "message_ts": self._ts()}

    def _thread_view(self, m: Message, meta: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": m.ts, "user": m.user, "text": m.visible}
        if m.thread_ts:
            out["thread_ts"] = m.thread_ts
        if m.bot:
            out["bot_id"] = BOT_ID
        if meta and m.metadata:
            out["metadata"] = m.metadata
        return out

    def _m_conversations_replies(self, a: dict[str, Any]) -> dict[str, Any]:
        meta = str(a.get("include_all_metadata")).lower() in ("1", "true")
        msgs = [self._thread_view(m, meta) for m in self.messages
                if m.channel == a["channel"] and not m.deleted
                and (m.ts == a["ts"] or m.thread_ts == a["ts"])]
        return {"ok": True, "messages": msgs, "has_more": False}

    def _m_conversations_history(self, a: dict[str, Any]) -> dict[str, Any]:
        meta = str(a.get("include_all_metadata")).lower() in ("1", "true")
        oldest = str(a.get("oldest") or "")
        msgs = [self._thread_view(m, meta) for m in reversed(self.messages)
                if m.channel == a["channel"] and not m.deleted and not m.thread_ts
                and m.ts > oldest]
        return {"ok": True, "messages": msgs, "has_more": False}

    def _m_reactions_add(self, a: dict[str, Any]) -> dict[str, Any]:
        self.reactions.append((a["channel"], a["timestamp"], a["name"]))
        return {"ok": True}

    def _m_reactions_remove(self, a: dict[str, Any]) -> dict[str, Any]:
        key = (a["channel"], a["timestamp"], a["name"])
        if key not in self.reactions:
            return {"ok": False, "error": "no_reaction"}
        self.reactions.remove(key)
        return {"ok": True}

    def _m_assistant_threads_setStatus(self, a: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append((a["channel_id"], a["thread_ts"], a.get("status", "")))
        return {"ok": True}

    def _m_assistant_threads_setSuggestedPrompts(self, a: dict[str, Any]) -> dict[str, Any]:
        self.prompts.append(a)
        return {"ok": True}

    def _m_users_info(self, a: dict[str, Any]) -> dict[str, Any]:
        user = str(a["user"])
        return {"ok": True, "user": {"id": user, "name": f"name-{user.lower()}",
                                     "locale": self.locales.get(user, "ko-KR")}}

    def _add(self, msg: Message) -> None:
        self.messages.append(msg)
        self._shown(msg)

    def _shown(self, msg: Message, edit: bool = False) -> None:
        msg.edits += int(edit)
        msg.shown.append((time.monotonic(), msg.visible))

    def _echo(self, msg: Message) -> None:
        """Slack sends the bot its own messages too (when subscribed): they must be ignored."""
        if not self.echo_bot_messages:
            return
        event = {"type": "message", "channel": msg.channel, "user": BOT_USER, "bot_id": BOT_ID,
                 "app_id": APP_ID, "text": msg.text, "ts": msg.ts, "event_ts": msg.ts,
                 "channel_type": _channel_type(msg.channel), "team": TEAM}
        if msg.thread_ts:
            event["thread_ts"] = msg.thread_ts
        self._spawn(self.deliver(self.event_body(event)))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _response_url(self, request: web.Request) -> web.Response:
        data = await request.json()
        data["n"] = request.match_info["n"]
        self.responses.append(data)
        await self._notify()
        return web.json_response({"ok": True})

    # -- Socket Mode -----------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_json({"type": "hello", "num_connections": len(self._sockets),
                            "connection_info": {"app_id": APP_ID},
                            "debug_info": {"host": "fake", "approximate_connection_time": 3600}})
        await self._notify()
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                fut = self._acks.get(data.get("envelope_id", ""))
                if fut is not None and not fut.done():
                    fut.set_result(data)
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)
        return ws

    def connected(self) -> bool:
        return bool(self._sockets)

    def connections(self) -> int:
        return len(self._sockets)

    # -- delivery to the app ---------------------------------------------------------------

    def event_body(self, event: dict[str, Any]) -> dict[str, Any]:
        self._n += 1
        return {"token": "fake-verification-token", "team_id": TEAM, "api_app_id": APP_ID,
                "event": event, "type": "event_callback", "event_id": f"Ev{self._n:08d}",
                "event_time": int(time.time()), "is_ext_shared_channel": False,
                "authorizations": [{"enterprise_id": None, "team_id": TEAM, "user_id": BOT_USER,
                                    "is_bot": True, "is_enterprise_install": False}]}

    def sign(self, body: str, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        return {"X-Slack-Request-Timestamp": ts,
                "X-Slack-Signature": self._verifier.generate_signature(timestamp=ts, body=body)}

    async def deliver(self, body: dict[str, Any], *, times: int = 1) -> Any:
        """Deliver an event as Slack does: retried when not acknowledged within 3 s; `times`
        > 1 repeats it as retries even when acknowledged (Slack does that too)."""
        result: Any = None
        attempt = 0
        while True:
            result = await self._deliver_once(body, "events_api", attempt)
            acked = result is not None
            self.deliveries.append((body.get("event_id", ""), attempt, "ack" if acked else "none"))
            attempt += 1
            if attempt >= max(times, 1) and acked:
                return result
            if attempt > len(self.retry_delays):
                return result
            if not acked:
                await asyncio.sleep(self.retry_delays[attempt - 1])

    async def _deliver_once(self, payload: dict[str, Any], kind: str, attempt: int) -> Any:
        if self.mode == "http":
            return await self._post_http(payload, kind, attempt)
        return await self._send_envelope(payload, kind, attempt)

    async def _post_http(self, payload: dict[str, Any], kind: str, attempt: int) -> Any:
        assert self._session is not None and self.app_url, "set fake.app_url for http mode"
        if kind == "events_api":
            body, ctype = json.dumps(payload), "application/json"
        elif kind == "slash_commands":
            body, ctype = urlencode(payload), "application/x-www-form-urlencoded"
        else:
            body = urlencode({"payload": json.dumps(payload)})
            ctype = "application/x-www-form-urlencoded"
        headers = {"Content-Type": ctype, **self.sign(body)}
        if attempt:
            headers |= {"X-Slack-Retry-Num": str(attempt), "X-Slack-Retry-Reason": "http_timeout"}
        try:
            async with self._session.post(
                self.app_url, data=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.ack_timeout_s),
            ) as resp:
                if resp.status != 200:
                    return None
                text = await resp.text()
                return json.loads(text) if text.startswith("{") else {"text": text}
        except (TimeoutError, aiohttp.ClientError):
            return None

    async def _send_envelope(self, payload: dict[str, Any], kind: str, attempt: int) -> Any:
        await self.wait_for(self.connected, 10, "a socket mode connection")
        self._n += 1
        envelope_id = f"env-{self._n}"
        envelope: dict[str, Any] = {"envelope_id": envelope_id, "type": kind,
                                    "payload": payload,
                                    "accepts_response_payload": kind != "events_api"}
        if kind == "events_api":
            envelope |= {"retry_attempt": attempt,
                         "retry_reason": "timeout" if attempt else ""}
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[envelope_id] = fut
        try:
            ws = self._sockets[self._n % len(self._sockets) if self.spread_events else -1]
            await ws.send_json(envelope)
            ack = await asyncio.wait_for(fut, self.ack_timeout_s)
            return ack.get("payload") or {}
        except (TimeoutError, ConnectionError, RuntimeError):
            return None
        finally:
            self._acks.pop(envelope_id, None)

    # -- what users do ---------------------------------------------------------------------

    async def user_message(self, text: str, *, user: str = "U0ALICE", channel: str = "C0GENERAL",
                           thread_ts: str | None = None, mention: bool = True,
                           files: bool = False, times: int = 1) -> Message:
        """A person posts; Slack sends `message` and, for a mention, `app_mention`."""
        ctype = _channel_type(channel)
        if mention and ctype != "im":
            text = f"<@{BOT_USER}> {text}"
        msg = Message(channel, self._ts(), user, thread_ts, False, text)
        self._add(msg)
        base = {"user": user, "text": text, "ts": msg.ts, "event_ts": msg.ts,
                "channel": channel, "team": TEAM}
        if thread_ts:
            base["thread_ts"] = thread_ts
        if files:
            base |= {"subtype": "file_share", "files": [{"id": "F1", "name": "a.png"}]}
        events = [base | {"type": "message", "channel_type": ctype}]
        if f"<@{BOT_USER}>" in text and ctype != "im":
            events.append(base | {"type": "app_mention"})
        await asyncio.gather(*(self.deliver(self.event_body(e), times=times) for e in events))
        return msg

    async def slash(self, text: str, *, user: str = "U0ALICE", channel: str = "C0GENERAL",
                    command: str = "/kullm") -> tuple[Any, float]:
        """Run a slash command: returns (acknowledgement, seconds until it came)."""
        self._n += 1
        payload = {"token": "fake-verification-token", "team_id": TEAM, "team_domain": "fake",
                   "channel_id": channel, "channel_name": "general", "user_id": user,
                   "user_name": user.lower(), "command": command, "text": text,
                   "api_app_id": APP_ID, "is_enterprise_install": "false",
                   "response_url": f"{self.url}/response/{self._n}",
                   "trigger_id": self._trigger(user)}
        start = time.monotonic()
        ack = await self._deliver_once(payload, "slash_commands", 0)
        return ack, time.monotonic() - start

    async def click(self, action_id: str, value: str, *, user: str = "U0ALICE",
                    channel: str = "C0GENERAL") -> Any:
        self._n += 1
        payload = {"type": "block_actions", "team": {"id": TEAM, "domain": "fake"},
                   "user": {"id": user, "team_id": TEAM}, "api_app_id": APP_ID,
                   "token": "fake-verification-token", "trigger_id": self._trigger(user),
                   "channel": {"id": channel}, "container": {"type": "message"},
                   "response_url": f"{self.url}/response/{self._n}",
                   "actions": [{"type": "button", "action_id": action_id, "block_id": "b",
                                "value": value, "action_ts": str(time.time())}]}
        return await self._deliver_once(payload, "interactive", 0)

    async def press(self, msg: Message, action_id: str, *, user: str = "U0ALICE") -> Any:
        """A person presses the button `action_id` that `msg` shows."""
        return await self._deliver_once(self.action_payload(msg, action_id, user),
                                        "interactive", 0)

    async def submit(self, opened: dict[str, Any], value: str) -> Any:
        """A person submits the modal `opened` (an entry of `views`) with `value`."""
        return await self._deliver_once(self.submission_payload(opened, value),
                                        "interactive", 0)

    async def open_home(self, *, user: str = "U0ALICE") -> None:
        """A person opens the app's Home tab."""
        event = {"type": "app_home_opened", "user": user, "channel": f"D0{user[2:]}",
                 "tab": "home", "event_ts": self._ts()}
        await self.deliver(self.event_body(event))

    def ephemeral_texts(self, user: str | None = None) -> list[str]:
        return [e["text"] for e in self.ephemerals if user is None or e["user"] == user]

    async def assistant_thread_started(self, *, user: str = "U0ALICE",
                                       channel: str = "D0ALICE") -> str:
        thread = self._ts()
        event = {"type": "assistant_thread_started", "event_ts": thread,
                 "assistant_thread": {"user_id": user, "channel_id": channel,
                                      "thread_ts": thread, "context": {}}}
        await self.deliver(self.event_body(event))
        return thread


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


def _channel_type(channel: str) -> str:
    return {"D": "im", "G": "group"}.get(channel[:1], "channel")


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value else None
        except ValueError:
            return None
    return value


async def _args(request: web.Request) -> dict[str, Any]:
    args: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        args |= await request.json()
    elif request.can_read_body:
        args |= dict(parse_qsl(await request.text()))
    return args
