"""All replies this process is delivering: leases kept alive, orphans adopted, clean stop."""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from bots.telegram.delivery import Env, ReplyTask
from bots.telegram.state import DeliveryRecord
from kullm_core import logctx

log = logging.getLogger(__name__)


class Deliveries:
    """Runs `ReplyTask`s; renews their leases; takes over those of dead processes."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.tasks: dict[str, ReplyTask] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._maintainer: asyncio.Task[None] | None = None
        self.adopted = 0

    async def start(self) -> None:
        await self.adopt()
        self._maintainer = asyncio.create_task(self._maintain(), name="tg-deliveries")

    def for_conversation(self, conv_key: str) -> list[ReplyTask]:
        """Replies of a conversation whose job is not over yet."""
        return [
            t for t in self.tasks.values() if t.rec.conv_key == conv_key and not t.answered
        ]

    async def begin(self, rec: DeliveryRecord) -> ReplyTask | None:
        """Register a new delivery; None when some process already delivers this job."""
        if rec.job_id in self.tasks or not await self.env.registry.claim(rec.job_id):
            return None
        await self.env.registry.save(rec)
        task = ReplyTask(self.env, rec)
        self.tasks[rec.job_id] = task
        return task

    def spawn(self, task: ReplyTask) -> None:
        self._runners[task.job_id] = asyncio.create_task(
            self._run(task), name=f"tg-reply-{task.job_id}"
        )

    async def drop(self, task: ReplyTask) -> None:
        """A delivery that ended before it was spawned (refused, nothing to retry)."""
        self.tasks.pop(task.job_id, None)
        await self.env.registry.finish(task.job_id)

    async def _run(self, task: ReplyTask) -> None:
        logctx.bind(platform="telegram", job_id=task.job_id, conversation=task.rec.conv_key)
        try:
            await task.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: delivery to chat %s failed", task.job_id, task.rec.chat_id)
            task.finished = True  # do not let every restart fail on it again
        finally:
            self._runners.pop(task.job_id, None)
            if task.finished:
                self.tasks.pop(task.job_id, None)
                await self.env.registry.finish(task.job_id)

    async def adopt(self) -> None:
        """Take over deliveries whose process stopped renewing its lease."""
        registry = self.env.registry
        for job_id in await registry.orphans(set(self.tasks)):
            if self._stop.is_set() or not await registry.claim(job_id):
                continue
            rec = await registry.load(job_id)
            if rec is None:
                await registry.finish(job_id)
                continue
            log.info("job %s: resuming delivery to chat %s (%d message(s) shown)", job_id,
                     rec.chat_id, len(rec.message_ids))
            task = ReplyTask(self.env, rec, recovering=True)
            self.tasks[job_id] = task
            self.adopted += 1
            self.spawn(task)

    async def _maintain(self) -> None:
        tuning = self.env.tuning
        loop = asyncio.get_running_loop()
        next_scan = loop.time() + tuning.rescan_every_s
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), tuning.renew_every_s)
                return
            except TimeoutError:
                pass
            try:
                ids = list(self.tasks)
                held = await self.env.registry.renew(ids)
                if held < len(ids):
                    log.warning("%d delivery lease(s) expired before renewal", len(ids) - held)
                if loop.time() >= next_scan:
                    next_scan = loop.time() + tuning.rescan_every_s
                    await self.adopt()
            except RedisError as exc:
                log.warning("delivery leases: Redis unavailable (%s)", exc)

    async def stop(self, grace_s: float) -> None:
        """Let replies in progress finish for `grace_s`, then hand the rest back."""
        self._stop.set()
        if self._maintainer is not None:
            await self._maintainer
        runners = list(self._runners.values())
        if runners and grace_s > 0:
            log.info("finishing %d repl(ies) (grace %.0f s)", len(runners), grace_s)
            await asyncio.wait(runners, timeout=grace_s)
        for runner in self._runners.values():
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        unfinished = [j for j, t in self.tasks.items() if not t.finished]
        if unfinished:
            log.info("handing back %d unfinished deliver(ies)", len(unfinished))
            await self.env.registry.release(unfinished)
        self.tasks.clear()
