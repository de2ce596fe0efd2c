"""What the fake Slack holds and how tests read it: the workspace's constants, the limits it
enforces (`Limits`), its messages as people see them (`Message`), and `SlackState`, the record
of everything the app did (messages, ephemerals, reactions, statuses, calls) with the waits and
queries tests assert on. The layers above add the events Slack sends (`slack_events`), the Web
API methods (`slack_methods`) and the server (`slack_api`)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from slack_sdk.signature import SignatureVerifier

from tests.fakes.slack_blocks import HelpdeskFake

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


class SlackState(HelpdeskFake):
    """The fake Slack's state and its observation; `FakeSlack` (in `slack_api`) is built on it."""

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

    def ephemeral_texts(self, user: str | None = None) -> list[str]:
        return [e["text"] for e in self.ephemerals if user is None or e["user"] == user]

    # -- messages --------------------------------------------------------------------------

    def _ts(self) -> str:
        self._n += 1
        # Real Slack ts are the posting time (microseconds, unique per channel): quoted
        # thread messages are ordered among the bot's turns by them.
        self._last_us = max(int(time.time() * 1_000_000), self._last_us + 1)
        return f"{self._last_us // 1_000_000}.{self._last_us % 1_000_000:06d}"

    def _find(self, channel: str, ts: str) -> Message | None:
        return next((m for m in self.messages if m.channel == channel and m.ts == ts
                     and not m.deleted), None)

    def _add(self, msg: Message) -> None:
        self.messages.append(msg)
        self._shown(msg)

    def _shown(self, msg: Message, edit: bool = False) -> None:
        msg.edits += int(edit)
        msg.shown.append((time.monotonic(), msg.visible))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
