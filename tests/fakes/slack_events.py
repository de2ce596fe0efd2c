"""What the fake Slack sends the app: events delivered over a Socket Mode websocket or as
signed Events API requests (retried when not acknowledged in time, as Slack does), Slack's
echo of the bot's own messages, and what people do that makes them (`user_message`, `slash`,
`click`, `press`, `submit`, `open_home`, `assistant_thread_started`)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from tests.fakes.slack_state import APP_ID, BOT_ID, BOT_USER, TEAM, Message, SlackState


class SlackEvents(SlackState):
    """Delivery to the app and the people's side, on top of `SlackState`."""

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

    async def assistant_thread_started(self, *, user: str = "U0ALICE",
                                       channel: str = "D0ALICE") -> str:
        thread = self._ts()
        event = {"type": "assistant_thread_started", "event_ts": thread,
                 "assistant_thread": {"user_id": user, "channel_id": channel,
                                      "thread_ts": thread, "context": {}}}
        await self.deliver(self.event_body(event))
        return thread


def _channel_type(channel: str) -> str:
    return {"D": "im", "G": "group"}.get(channel[:1], "channel")
