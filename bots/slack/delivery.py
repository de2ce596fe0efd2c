"""Following reply streams and driving the replies that show them, across restarts.

For every accepted message: take the reply's lease, register it (so a restarted adapter finds
it), submit, then follow the job's reply events into a `SlackReply` until Slack shows the final
text. On start, and every lease period, replies in the registry whose lease lapsed are resumed
from their reply stream (from the first event: update mode rewrites their messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from bots.slack.calls import SlackReply
from bots.slack.reply import Env, Mode, Msg, Reply
from bots.slack.scheduler import Scheduler
from bots.slack.store import Entry, SlackStore
from bots.slack.target import Target, conversation
from bots.slack.texts import st
from kullm_core import logctx, metrics
from kullm_core.client import CoreClient, Submission
from kullm_core.streams import ReplyStreams
from kullm_core.texts import error_text, finish_note
from kullm_core.wire import ConversationRef, Event, Job, UserRef

log = logging.getLogger(__name__)


class Deliveries:
    """All replies this adapter is delivering."""

    def __init__(self, client: CoreClient, scheduler: Scheduler, store: SlackStore, env: Env,
                 streams: ReplyStreams, *, native: bool) -> None:
        self.client = client
        self.streams = streams
        self.scheduler = scheduler
        self.store = store
        self.env = env
        self.native = native
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._replies: dict[str, SlackReply] = {}
        self._sources: dict[str, str] = {}
        self._lease_task: asyncio.Task[None] | None = None
        self._side: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.idle = asyncio.Event()
        self.idle.set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.resume_orphans()
        self._lease_task = asyncio.create_task(self._lease_loop(), name="slack-leases")

    async def stop(self, grace_s: float) -> None:
        """Give replies in flight `grace_s` to finish, then hand the rest over (lease released,
        registry kept) to whichever adapter starts next."""
        if self._lease_task is not None:
            self._lease_task.cancel()
            await asyncio.gather(self._lease_task, return_exceptions=True)
        tasks = list(self._tasks.values())
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        left = [j for j, task in self._tasks.items() if not task.done()]
        for job_id in left:
            self._tasks[job_id].cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if left:
            log.info("slack: handing over %d replies in flight", len(left))
            await self.store.release(left)

    def active(self) -> int:
        return len(self._tasks)

    def replies(self) -> list[SlackReply]:
        return list(self._replies.values())

    def set_lang(self, job_id: str, lang: str) -> None:
        """The asker's UI language, learnt after the question was submitted."""
        reply = self._replies.get(job_id)
        if reply is not None and reply.target.lang != lang:
            reply.target = dataclasses.replace(reply.target, lang=lang)

    # -- new messages ----------------------------------------------------------------------

    def mode_for(self, target: Target) -> Mode:
        if self.native and target.thread_ts and self.env.native_ok(target.team):
            return "stream"
        return "update"

    async def submit(self, conv: ConversationRef, user: UserRef, text: str, source_id: str,
                     target: Target, *, status: str | None = None) -> Submission | None:
        """Submit a message and deliver its answer. None: another delivery already owns it."""
        job_id = Job.id_for(source_id)
        if job_id in self._tasks or not await self.store.claim(job_id):
            return None
        mode = self.mode_for(target)
        if not await self.store.create(Entry(job_id, source_id, target, mode)):
            log.info("job %s: already registered; left to its delivery", job_id)
            await self.store.release([job_id])
            return None
        try:
            sub = await self.client.submit(conv, user, text, source_id, target.meta())
        except BaseException:
            await self.store.remove(job_id)
            raise
        if sub.status != "queued":
            await self.store.remove(job_id)
            return sub
        reply = SlackReply(job_id, target, self.env, mode=mode, status=status)
        self._launch(reply, source_id, resumed=False)
        return sub

    # -- resume ----------------------------------------------------------------------------

    async def resume_orphans(self) -> int:
        """Resume registered replies that no running adapter delivers."""
        n = 0
        for job_id in await self.store.pending():
            if job_id in self._tasks or not await self.store.claim(job_id):
                continue
            entry = await self.store.load(job_id)
            if entry is None:
                await self.store.remove(job_id)
                continue
            msgs = [Msg(str(m.get("ts", "")), streaming=bool(m.get("streaming")))
                    for m in entry.msgs]
            reply = SlackReply(job_id, entry.target, self.env, mode="update", msgs=msgs)
            log.info("job %s: resuming delivery (%d message(s) shown so far)", job_id, len(msgs))
            self._launch(reply, entry.source_id, resumed=True)
            n += 1
        return n

    async def _lease_loop(self) -> None:
        period = self.store.tuning.lease_s / 3
        ticks = 0
        while True:
            await asyncio.sleep(period)
            ticks += 1
            try:
                await self.store.renew(list(self._tasks))
                if ticks % 3 == 0:
                    await self.resume_orphans()
            except Exception:
                log.exception("slack: lease renewal failed")

    # -- following -------------------------------------------------------------------------

    def _launch(self, reply: SlackReply, source_id: str, *, resumed: bool) -> None:
        self._replies[reply.job_id] = reply
        self._sources[reply.job_id] = source_id
        self.idle.clear()
        self.scheduler.add(reply)
        task = asyncio.create_task(self._follow(reply, source_id, resumed),
                                   name=f"slack-reply-{reply.job_id}")
        self._tasks[reply.job_id] = task

    async def persist(self, reply: Reply) -> None:
        source = self._sources.get(reply.job_id, "")
        msgs: list[dict[str, object]] = [{"ts": m.ts, "streaming": m.streaming}
                                         for m in reply.msgs]
        await self.store.save(Entry(reply.job_id, source, reply.target, reply.mode, msgs))

    async def _follow(self, reply: SlackReply, source_id: str, resumed: bool) -> None:
        job_id, finished = reply.job_id, False
        t = reply.target
        logctx.bind(platform="slack", job_id=job_id,
                    conversation=conversation(t.team, t.channel, t.thread_ts).key)
        try:
            state = await self.client.job_state(job_id, source_id) if resumed else "live"
            if state == "never":
                log.warning("job %s: registered but never queued; dropped", job_id)
                reply.give_up("never queued")
            elif state == "gone":
                await self._from_history(reply)
            else:
                async for _, event in self.streams.follow(job_id):
                    self.apply(reply, event)
            await reply.done.wait()
            finished = True
            self.delivered += 1
            if not reply.gave_up:
                metrics.delivered("slack", reply.edits)
            if reply.reacted:
                self._unreact(reply)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Keep the registry entry and let the lease go: the orphan scan resumes it.
            log.exception("job %s: delivery interrupted; it will be resumed", job_id)
        finally:
            self.scheduler.discard(reply)
            self._tasks.pop(job_id, None)
            self._replies.pop(job_id, None)
            self._sources.pop(job_id, None)
            with contextlib.suppress(Exception):
                if finished:
                    await asyncio.shield(self.store.remove(job_id))
                elif not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    await asyncio.shield(self.store.release([job_id]))
            if not self._tasks:
                self.idle.set()

    def _unreact(self, reply: Reply) -> None:
        """Take the waiting-in-line reaction off, without holding the reply up (Tier 3)."""
        t, name = reply.target, reply.reacted or ""

        async def _remove() -> None:
            try:
                await self.scheduler.call(
                    "unreact", (f"t3:{t.team}:reactions",),
                    lambda: self.env.web.reactions_remove(
                        channel=t.channel, timestamp=t.source_ts, name=name),
                    urgent=False)
            except Exception as exc:
                log.info("job %s: reaction not removed (%s)", reply.job_id, exc)

        task = asyncio.create_task(_remove())
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    def apply(self, reply: Reply, event: Event) -> None:
        lang = reply.target.lang
        if event.type == "queued":
            if event.position > 1 and not reply.msgs and not reply.target.assistant:
                reply.reaction = "hourglass_flowing_sand"
        elif event.type == "started":
            reply.started(event.attempt)
        elif event.type == "delta":
            reply.add(event.text, event.attempt)
        elif event.type == "done":
            note = finish_note(event.finish_reason, lang)
            if not event.text.strip() and not note:
                note = st("empty_reply", lang)
            reply.finish(event.text, note)
        elif event.type == "error":
            reply.finish(reply.text, "⚠️ " + error_text(event, lang))

    async def _from_history(self, reply: Reply) -> None:
        """The job was answered while no adapter delivered it and its stream expired."""
        t = reply.target
        conv = conversation(t.team, t.channel, t.thread_ts)
        for turn in reversed(await self.client.history(conv)):
            if turn.job_id == reply.job_id:
                reply.finish(turn.assistant, "")
                return
        reply.finish("", st("lost_reply", t.lang))
