"""The Slack side of the reply lifecycle: `SlackPlatform.sink` makes a `SlackReply` for each
reply `kullm_core.replies.Deliveries` delivers.

The core says what the user should see (`progress`, `finish`...); the reply turns it into
Slack calls that the scheduler runs within the shared send budget. `progress` only buffers
the text and wakes the scheduler; `finish` returns once Slack shows the final text. A resumed
reply (its record has `shown` messages) starts in update mode, so it rewrites what an earlier
adapter streamed instead of appending to it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from bots.slack.calls import handle_error, run_op
from bots.slack.helpdesk import ATTACH, Attach, actions_block
from bots.slack.render import split
from bots.slack.reply import Mode, Msg, Reply, SlackShared
from bots.slack.scheduler import Scheduler, SlackCall
from bots.slack.target import Target
from bots.slack.texts import st
from kullm_core import metrics
from kullm_core.helpdesk.actions import Action
from kullm_core.replies import Save
from kullm_core.wire import ReplyRecord

log = logging.getLogger(__name__)

HOURGLASS = "hourglass_flowing_sand"


class SlackReply(Reply):
    """A `Reply` the scheduler runs (`Outbound`) and the core drives (`ReplySink`)."""

    scheduler: Scheduler | None = None
    buttons: list[dict[str, Any]] | None = None
    """The helpdesk's actions block, for the last message part of the final reply."""
    buttons_on = ""
    """The message that shows them (its ts)."""
    _button_tries = 0
    _button_index: int | None = None

    # -- Outbound (the scheduler) ----------------------------------------------------------

    async def run(self, op: SlackCall) -> None:
        if not self.buttons or not self._carries(op):
            await run_op(self, op)
            return
        attach = Attach(self.buttons)
        token = ATTACH.set(attach)
        try:
            await run_op(self, op)
        finally:
            ATTACH.reset(token)
        if attach.done and op.index < len(self.msgs):
            self.buttons_on = self.msgs[op.index].ts

    def _carries(self, op: SlackCall) -> bool:
        """Whether `op` writes the final text of the last message part (module
        bots.slack.helpdesk: the buttons ride on that call)."""
        if not self.final:
            return False
        if op.kind in ("post", "stop"):
            return op.data.get("end") == len(self.source())
        if op.kind == "update":
            last = len(split(self.source(), self.limit)) - 1
            return op.index in (last, self._button_index)
        return False

    def _op(self) -> SlackCall | None:
        op = super()._op()
        if op is not None or not self._missing_buttons():
            return op
        # The last part got its final text without a call of its own (it already showed
        # it): one chat.update adds the buttons.
        self._button_tries += 1
        if self._button_tries > 3:
            log.warning("job %s: answer buttons could not be attached", self.job_id)
            self.buttons = None
            return None
        if self.mode == "stream":
            self.rewrite()
        self._button_index = len(self.msgs) - 1
        self.msgs[-1].sent = None
        return super()._op()

    def _missing_buttons(self) -> bool:
        return (bool(self.buttons) and self.final and bool(self.msgs) and not self.gave_up
                and self.reconcile is None and not any(m.streaming for m in self.msgs)
                and self.buttons_on != self.msgs[-1].ts)

    def on_error(self, op: SlackCall, exc: BaseException) -> None:
        handle_error(self, op, exc)

    # -- ReplySink (the core) --------------------------------------------------------------

    async def waiting(self, position: int, *, behind: bool = False) -> None:
        """Waiting behind others in line: an hourglass on the question (nothing posted)."""
        if position > 1 and not self.msgs and not self.target.assistant \
                and self.target.source_ts and self.reacted is None:
            self.reaction = HOURGLASS
            self.env.wake()

    async def warming(self) -> None:
        """Nothing to show: the handler told the asker privately that the model loads."""

    async def progress(self, text: str) -> None:
        self.show(text)

    async def finish(self, text: str, note: str, actions: Sequence[Action] = ()) -> bool:
        if not text.strip() and not note:
            note = st("empty_reply", self.target.lang)
        self.buttons = actions_block(actions) or None
        self.end(text, note)
        return await self._shown()

    async def fail(self, text: str, message: str) -> None:
        self.end(text, "⚠️ " + message)
        await self._shown()

    async def notice(self, text: str) -> None:
        """A refusal (rate limit, nothing to regenerate...): only the asker sees it."""
        t = self.target
        if self.scheduler is None:
            return
        try:
            await self.scheduler.call("chat.postEphemeral", t.team, lambda: self.env.web
                                      .chat_postEphemeral(channel=t.channel, user=t.user,
                                                          text=text,
                                                          thread_ts=t.thread_ts or None))
        except Exception as exc:
            log.warning("job %s: notice not sent (%s)", self.job_id, exc)

    async def _shown(self) -> bool:
        await self.done.wait()
        if not self.gave_up:
            metrics.delivered("slack", self.edits)
        return not self.gave_up

    async def close(self) -> None:
        """Off the scheduler; the hourglass comes off the question in the background."""
        if self.scheduler is None:
            return
        self.scheduler.discard(self)
        self.reaction = None
        if self.reacted:
            self._unreact(self.scheduler, self.reacted)

    def _unreact(self, scheduler: Scheduler, name: str) -> None:
        t = self.target

        async def _remove() -> None:
            try:
                await scheduler.call("reactions.remove", t.team, lambda: self.env.web
                                     .reactions_remove(channel=t.channel,
                                                       timestamp=t.source_ts, name=name),
                                     urgent=False)
            except Exception as exc:
                log.info("job %s: reaction not removed (%s)", self.job_id, exc)

        task = asyncio.create_task(_remove(), name=f"slack-unreact-{self.job_id}")
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Task[None]] = set()


class SlackPlatform:
    """`ChatPlatform` for Slack: each reply a `SlackReply` on the one scheduler."""

    namespace = "slack"

    def __init__(self, env: SlackShared, scheduler: Scheduler, *, native: bool) -> None:
        self.env = env
        self.scheduler = scheduler
        self.native = native

    def mode_for(self, target: Target) -> Mode:
        if self.native and target.thread_ts and self.env.native_ok(target.team):
            return "stream"
        return "update"

    def sink(self, record: ReplyRecord, save: Save) -> SlackReply:
        target = Target.from_meta(record.target)
        shown: list[dict[str, Any]] = list(record.shown.get("msgs") or [])
        msgs = [Msg(str(m.get("ts", "")), streaming=bool(m.get("streaming"))) for m in shown]
        if msgs:
            log.info("job %s: resuming in %d message(s) shown so far", record.job_id, len(msgs))
        status = st("thinking", target.lang) if target.assistant and not msgs else None
        reply = SlackReply(record.job_id, target, self.env, save=save, msgs=msgs, status=status,
                           mode="update" if msgs else self.mode_for(target))
        reply.scheduler = self.scheduler
        self.scheduler.add(reply)
        return reply
