"""One reply being shown in Slack: its text, its messages, and the next Slack call it needs.

Two ways to show a growing reply:

* **stream** (native): `chat.startStream`, `chat.appendStream` of new text, `chat.stopStream`.
  Appended text is final, so the cut to a next message is decided before it is sent.
* **update**: `chat.postMessage` once, then `chat.update` with the whole text so far. Every
  message can be rewritten, so this mode repairs anything: a worker restart (new attempt), a
  final text that differs from the deltas, a resumed reply after an adapter restart.

The reply never calls Slack on its own: `next_op` describes the call and the buckets of the
shared send budget it counts against (`SlackScopes`), the scheduler runs it when the budget
allows, merging whatever text arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.config import SlackTuning
from bots.slack.render import Segment, as_chunk, neutralize, split
from bots.slack.scheduler import SlackCall
from bots.slack.target import Target
from kullm_core.scopes import SlackScopes

log = logging.getLogger(__name__)

Mode = Literal["stream", "update"]
METADATA_EVENT = "kullm_reply"


@dataclass
class Msg:
    """One Slack message of a reply."""

    ts: str
    streaming: bool = False
    appended: int = 0
    """Stream mode: characters of the segment's source already appended."""
    sent: str | None = None
    """The Markdown this message shows (None: unknown, rewrite it)."""


@dataclass
class SlackShared:
    """What all replies share: the Web API client, limits, per-workspace capabilities."""

    web: AsyncWebClient
    tuning: SlackTuning
    wake: Callable[[], None]
    scopes: SlackScopes = field(default_factory=SlackScopes)
    native_off: dict[str, float] = field(default_factory=dict)
    """team -> monotonic time until which native streaming is not tried there."""
    blocks_off: set[str] = field(default_factory=set)
    """Workspaces that refused markdown blocks: mrkdwn text there."""

    def native_ok(self, team: str) -> bool:
        return self.native_off.get(team, 0.0) <= time.monotonic()


async def _no_save() -> None:
    return None


class Reply:
    """State of one reply and the choice of its next Slack call (see module doc)."""

    def __init__(
        self,
        job_id: str,
        target: Target,
        env: SlackShared,
        *,
        mode: Mode,
        msgs: list[Msg] | None = None,
        status: str | None = None,
        save: Callable[[], Awaitable[None]] = _no_save,
    ) -> None:
        self.name = job_id
        self.job_id = job_id
        self.target = target
        self.env = env
        self.save = save
        """Stores `msgs` where a restarted adapter finds them (the core's `Save`)."""
        self.mode: Mode = mode
        self.msgs: list[Msg] = msgs or []
        self.text = ""
        self.attempt = 0
        self.final = False
        self.tail = ""
        self.limit = env.tuning.max_message_chars
        self.forced: list[int] = []
        self.status = status
        """Assistant-thread status to set while nothing is visible yet."""
        self.reaction: str | None = None
        """A reaction to add on the question while it waits in line (nothing shown yet)."""
        self.reacted: str | None = None
        """The reaction added; removed (in the background) once the answer is shown."""
        self.reconcile: int | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.gave_up = False
        self.done = asyncio.Event()
        self.first_visible_at: float | None = None
        self.received_at = time.monotonic() if not self.msgs else None
        """When the question arrived (None: resumed, first shown by an earlier run)."""
        self.edits = 0
        """Calls that changed text already shown (update, append, stop)."""

    # -- inputs: the reply so far ------------------------------------------------------

    def show(self, text: str) -> None:
        """The whole reply so far. Text that does not continue what was streamed (a worker
        restarted the job) rewrites the messages."""
        if self.final or text == self.text:
            return
        self._diverge(text)
        self.text = text
        self.env.wake()

    def end(self, text: str, tail: str) -> None:
        """The authoritative final text (`DoneEvent.text`) and a note to show after it."""
        self._diverge(text)
        self.text = text
        if tail:
            self.tail = ("\n\n" + tail) if text.strip() else tail
        self.final = True
        self.env.wake()

    def _diverge(self, text: str) -> None:
        if self.mode == "stream" and self.msgs and not text.startswith(
                self.text[:self._fixed_len()]):
            log.info("job %s: the reply changed under what was streamed; rewriting",
                     self.job_id)
            self.rewrite()

    def _fixed_len(self) -> int:
        fixed = self.forced[-1] if self.forced else 0
        if self.msgs and self.msgs[-1].streaming:
            fixed += self.msgs[-1].appended
        return fixed

    def rewrite(self) -> None:
        """Switch to update mode: every message can then be rewritten to the current text."""
        self.mode = "update"
        self.forced.clear()

    def source(self) -> str:
        return self.text + self.tail if self.final else self.text

    # -- Outbound protocol ---------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.done.is_set()

    def next_op(self, now: float) -> SlackCall | None:
        if self.done.is_set():
            return None
        op = self._op()
        if op is None:
            if self.final and not any(m.streaming for m in self.msgs):
                self._complete()
            return None
        op.not_before = self.retry_at
        return op

    def _complete(self) -> None:
        if not self.done.is_set():
            self.done.set()
            log.info("job %s: delivered in %d message(s) (%s)", self.job_id, len(self.msgs),
                     self.mode)

    def give_up(self, why: str) -> None:
        log.error("job %s: giving up delivery in %s: %s", self.job_id, self.target.channel, why)
        self.gave_up = True
        self.done.set()

    def _call(self, kind: str, method: str, **kw: Any) -> SlackCall:
        """An op of Web API `method`, with the budget buckets it counts against and those a
        429 on it pauses."""
        t, scopes = self.target, self.env.scopes
        return SlackCall(kind, scopes.call(t.team, method, t.channel),
                  paused=scopes.on_429(t.team, method, t.channel), **kw)

    def state(self) -> dict[str, Any]:
        """What a restarted adapter needs to rewrite this reply (`ReplyRecord.shown`)."""
        return {"mode": self.mode,
                "msgs": [{"ts": m.ts, "streaming": m.streaming} for m in self.msgs]}

    def _op(self) -> SlackCall | None:
        src = self.source()
        if self.reconcile is not None:
            return self._call("reconcile", "conversations.replies", urgent=True,
                              index=self.reconcile)
        if not self.msgs and not src.strip():
            if self.status:
                return self._call("status", "assistant.threads.setStatus",
                                  data={"text": self.status})
            if self.reaction:
                return self._call("react", "reactions.add", data={"name": self.reaction})
            return None
        return self._stream_op(src) if self.mode == "stream" else self._update_op(src)

    # -- update mode ---------------------------------------------------------------------

    def render(self, src: str, seg: Segment) -> str:
        text = as_chunk(src, seg, close_open_fence=not self.final).text
        return text if text.strip() else "…"

    def _update_op(self, src: str) -> SlackCall | None:
        for i, m in enumerate(self.msgs):
            if m.streaming:
                return self._call("stop", "chat.stopStream", urgent=True, index=i,
                                  data={"text": "", "n": 0})
        segs = split(src, self.limit)
        dirty: SlackCall | None = None
        for i, seg in enumerate(segs):
            want = self.render(src, seg)
            if i >= len(self.msgs) or not self.msgs[i].ts:
                return self._call("post", "chat.postMessage", urgent=True, index=i,
                                  data={"md": want, "end": seg.end})
            if self.msgs[i].sent != want and dirty is None:
                dirty = self._call("update", "chat.update", urgent=self.final or seg.closed,
                                   index=i, data={"md": want})
        if dirty is not None:
            return dirty
        if self.final and len(self.msgs) > len(segs):
            return self._call("delete", "chat.delete", urgent=True, index=len(self.msgs) - 1)
        return None

    # -- stream mode ---------------------------------------------------------------------

    def _stream_op(self, src: str) -> SlackCall | None:
        cur = len(self.msgs) - 1 if self.msgs and self.msgs[-1].streaming else len(self.msgs)
        appended = self.msgs[cur].appended if cur < len(self.msgs) else 0
        start = self.forced[-1] if self.forced else 0
        segs = split(src, self.limit, tuple(self.forced), min_first=start + appended)
        seg = segs[cur] if cur < len(segs) else Segment(len(src), len(src), False)
        closing = seg.closed or self.final
        if cur == len(self.msgs):
            body = src[seg.start:seg.end]
            if closing:
                if not body.strip():
                    return None
                return self._call("post", "chat.postMessage", urgent=True, index=cur,
                                  data={"md": self.render(src, seg), "end": seg.end})
            chunk = _streamable(body)
            if not chunk.strip():
                return None
            pre = as_chunk(src, seg, close_open_fence=False).prefix
            return self._call("start", "chat.startStream", urgent=True, index=cur,
                              data={"text": pre + neutralize(chunk), "n": len(chunk)})
        rest = src[seg.start + appended:seg.end]
        if closing:
            whole = as_chunk(src, seg, close_open_fence=False)
            return self._call("stop", "chat.stopStream", urgent=True, index=cur,
                              data={"text": neutralize(rest) + whole.suffix, "n": len(rest),
                            "end": seg.end, "sent": whole.text})
        chunk = _streamable(rest)
        if not chunk:
            return None
        return self._call("append", "chat.appendStream", index=cur,
                          data={"text": neutralize(chunk), "n": len(chunk)})


def _streamable(text: str) -> str:
    """What may be appended now: trailing blanks wait for the next words (they may end the
    message), a trailing '<' waits so a broadcast mention can't slip through in two parts."""
    chunk = text.rstrip()
    return chunk[:-1] if chunk.endswith("<") else chunk
