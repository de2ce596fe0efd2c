"""Every reply one adapter process delivers: leases kept alive, orphans adopted, clean stop.

    async with Deliveries(client, platform, tuning) as deliveries:
        await deliveries.deliver(ReplyRecord.ask(conv, user, source_id, text, target))

`deliver` claims the reply's lease, stores its record, and runs it (`ReplyRun`): submit with
the one busy policy, follow through the one shared reply-stream reader, fold, drive the
platform's sink. Every `renew_every_s` the leases are renewed; a reply whose lease another
process took over (this one paused past its lease) is dropped here without touching its
record. Every `rescan_every_s` replies no live process holds are adopted and resumed.
`stop(grace)` lets replies finish for `grace` seconds, then hands the rest back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from kullm_core import logctx
from kullm_core.client import CoreClient
from kullm_core.limits import RefusalThrottle
from kullm_core.redis_checks import REDIS_TROUBLE, RedisGuard
from kullm_core.redis_text import owner_id
from kullm_core.replies.registry import ReplyRegistry
from kullm_core.replies.run import DeliveryContext, ReplyRun
from kullm_core.replies.sink import ChatPlatform
from kullm_core.replies.tuning import DeliveryTuning
from kullm_core.wire import ConversationRef, ErrorEvent, ReplyRecord, UserRef

log = logging.getLogger(__name__)


@dataclass
class _Running:
    run: ReplyRun
    task: asyncio.Task[None]


class Deliveries:
    """Runs `ReplyRun`s for one platform; renews their leases; adopts those of dead
    processes (see module doc)."""

    def __init__(self, client: CoreClient, platform: ChatPlatform,
                 tuning: DeliveryTuning | None = None, *, owner: str | None = None) -> None:
        self.client = client
        self.platform = platform
        self.tuning = tuning or DeliveryTuning.from_settings(client.settings)
        self.registry = ReplyRegistry(client.redis, client.keys, platform.namespace,
                                      owner or owner_id(), self.tuning.lease_s)
        self._streams = client.reply_streams()
        self.refusals = RefusalThrottle(self.tuning.refusal_interval_s)
        """One refusal per chat per interval (key ``{platform}:{chat}``); an adapter's own
        refusals (not allowed, too many pending) share it."""
        self.guard = RedisGuard(f"{platform.namespace} replies", base_s=0.05,
                                cap_s=self.tuning.redis_retry_max_s)
        self._ctx = DeliveryContext(client, self.registry, self._streams, self.tuning,
                                    self.guard, self.refusals)
        self._running: dict[str, _Running] = {}
        self._stopping = asyncio.Event()
        self._maintainer: asyncio.Task[None] | None = None
        self.adopted = 0
        self.delivered = 0

    async def __aenter__(self) -> Deliveries:
        await self._streams.__aenter__()
        await self.adopt()
        self._maintainer = asyncio.create_task(self._maintain(), name="reply-leases")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(self.tuning.grace_s)

    # -- replies ---------------------------------------------------------------------------

    def in_flight(self, conv: ConversationRef) -> list[str]:
        """Replies of this conversation whose job is not over yet, oldest first."""
        return [j for j, r in self._running.items()
                if r.run.rec.conversation.key == conv.key and not r.run.answered]

    def in_flight_of(self, user: UserRef, chat: str) -> list[str]:
        """Replies to this user in this chat whose job is not over yet."""
        return [j for j, r in self._running.items()
                if (r.run.rec.user.platform, r.run.rec.user.id) == (user.platform, user.id)
                and r.run.rec.conversation.chat == chat and not r.run.answered]

    async def deliver(self, rec: ReplyRecord, *,
                      on_refused: Callable[[ErrorEvent], None] | None = None) -> bool:
        """Start delivering a new reply. False: this or another process delivers it already
        (a redelivered platform event). `on_refused` hears why the core refused it (the
        user was told), e.g. to drop their next messages early while told to wait."""
        if self._stopping.is_set() or rec.job_id in self._running:
            return False
        if not await self.registry.claim(rec.job_id):
            return False
        await self.registry.save(rec)
        # behind another reply of its conversation: one this process delivers (perhaps not
        # queued yet: waiting for room), or any job ahead in the conversation's order
        behind = bool(self.in_flight(rec.conversation)) or await self.client.job_ahead(
            rec.conversation, rec.job_id)
        run = self._run_for(rec, resumed=False, behind=behind)
        if await run.submit() is False:  # refused: the user was told; nothing to follow
            await run.sink.close()
            if on_refused is not None and run.refusal is not None:
                on_refused(run.refusal)
            await self.registry.finish(rec.job_id)
            return True
        self._start(run)
        return True

    async def wait(self, job_id: str) -> None:
        """Until this process no longer delivers `job_id` (delivered, handed back, lost)."""
        running = self._running.get(job_id)
        if running is not None:
            await asyncio.gather(running.task, return_exceptions=True)

    async def stop_conversation(self, conv: ConversationRef) -> str | None:
        """The one `/stop`: stop the answer being written in this conversation (it finishes
        with the "stopped" note), and drop its questions still waiting for room in a full
        queue, and its questions queued but not started yet. Returns the stopped job's id,
        None when nothing was being answered or queued."""
        mine = [self._running[j] for j in self.in_flight(conv)]
        waiting = [r for r in mine if r.run.rec.state == "submitting"]
        for running in waiting:
            running.run.stop_waiting()
        await asyncio.gather(*(r.task for r in waiting), return_exceptions=True)
        stopped = await self.client.cancel(conv)
        for running in mine:  # queued, no active job yet: cancelled by id
            job_id = running.run.job_id
            if running not in waiting and job_id != stopped and not running.run.started.is_set():
                await self.client.cancel_job(job_id)
                stopped = stopped or job_id
        return stopped

    async def forget_user(self, platform: str, user_id: str) -> int:
        """The adapter's part of /forget (`CoreClient.on_forget`): the records of the user's
        replies go (one not yet accepted by the queue holds the question's text)."""
        return await self.registry.forget_user(platform, user_id)

    def _run_for(self, rec: ReplyRecord, *, resumed: bool, behind: bool) -> ReplyRun:
        return ReplyRun(self._ctx, rec, self.platform.sink, resumed=resumed, behind=behind)

    def _start(self, run: ReplyRun) -> None:
        task = asyncio.create_task(self._run(run), name=f"reply-{run.job_id}")
        self._running[run.job_id] = _Running(run, task)

    async def _run(self, run: ReplyRun) -> None:
        rec = run.rec
        logctx.bind(platform=self.platform.namespace, job_id=rec.job_id,
                    conversation=rec.conversation.key)
        finished = False
        try:
            await run.run()
            finished = True
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            # Never an error for the user: the orphan scan resumes it once Redis is back.
            log.warning("job %s: delivery interrupted (%s); handed back", rec.job_id,
                        type(exc).__name__)
        finally:
            running = self._running.get(rec.job_id)
            if running is not None and running.run is run:
                del self._running[rec.job_id]
            if finished:
                self.delivered += 1
                await asyncio.shield(self.guard.call(lambda: self.registry.finish(rec.job_id),
                                                     f"job {rec.job_id}: dropping the record"))
            elif not self._stopping.is_set() and not _cancelling():
                await asyncio.shield(self._release_quietly([rec.job_id]))

    async def _release_quietly(self, job_ids: list[str]) -> None:
        try:
            await self.registry.release(job_ids)
        except (RedisError, OSError) as exc:
            log.warning("handing back %d repl(ies) failed (%s); their leases lapse",
                        len(job_ids), type(exc).__name__)

    # -- leases ----------------------------------------------------------------------------

    async def adopt(self) -> int:
        """Resume replies that no live process delivers. Returns how many."""
        n = 0
        for job_id in await self.registry.orphans(set(self._running)):
            if self._stopping.is_set() or not await self.registry.claim(job_id):
                continue
            rec = await self.registry.load(job_id)
            if rec is None:
                await self.registry.finish(job_id)
                continue
            log.info("job %s: resuming delivery (%s, attempt %d shown)", job_id, rec.state,
                     rec.attempt)
            self._start(self._run_for(rec, resumed=True, behind=False))
            self.adopted += 1
            n += 1
        return n

    async def _maintain(self) -> None:
        loop = asyncio.get_running_loop()
        next_scan = loop.time() + self.tuning.rescan_every_s
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self.tuning.renew_every_s)
                return
            except TimeoutError:
                pass
            try:
                await self._renew()
                if loop.time() >= next_scan:
                    next_scan = loop.time() + self.tuning.rescan_every_s
                    await self.adopt()
            except REDIS_TROUBLE as exc:
                self.guard.failed(exc, "renewing reply leases")  # logged once per outage
                continue
            self.guard.ok()

    async def _renew(self) -> None:
        lost = await self.registry.renew(list(self._running))
        for job_id in lost:
            running = self._running.pop(job_id, None)
            if running is None:
                continue
            # Another process took it over: leave record and lease alone, stop showing it.
            log.warning("job %s: lease lost to another process; delivery dropped here", job_id)
            running.task.cancel()
            await asyncio.gather(running.task, return_exceptions=True)

    async def stop(self, grace_s: float) -> None:
        """Let replies in progress finish for `grace_s`, then hand the rest back."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._maintainer is not None:
            await self._maintainer
        tasks = [r.task for r in self._running.values()]
        if tasks and grace_s > 0:
            log.info("finishing %d repl(ies) (grace %.0f s)", len(tasks), grace_s)
            await asyncio.wait(tasks, timeout=grace_s)
        left = list(self._running)
        for job_id in left:
            self._running[job_id].task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if left:
            log.info("handing back %d unfinished repl(ies)", len(left))
            await self._release_quietly(left)
        self._running.clear()
        await self._streams.__aexit__(None, None, None)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())
