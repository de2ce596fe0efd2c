"""The one outbound scheduler: every Slack write of the adapter goes through it.

Each Slack limit is a `Bucket` (a minimum spacing between calls): `post:{team}:{channel}`
(chat.postMessage / chat.startStream, ~1 per second per channel), `update:{team}` (chat.update,
Tier 3, shared by every reply in the workspace), `stream:{team}` (appendStream / stopStream,
Tier 4), `t3:{team}:{method}` and `t4:{team}:{method}` for the rest (Slack counts those per
method). Replies do not call Slack themselves: they
describe their next call (`Op`) and the scheduler runs the most urgent one whose buckets are
free, least recently served first. So N replies streaming in one workspace each get an update
every N x 1.2 s and the workspace never exceeds its budget, whatever N is. A reply merges all
text that arrived while it waited into its next call.

A 429 pauses the buckets of the call for Retry-After: slack-sdk's rate-limit retry handler
(subclassed here to tell the scheduler) waits and repeats the same request, which Slack had
refused, so nothing is posted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from kullm_core import metrics

log = logging.getLogger(__name__)

_TICK_S = 0.01
_BUCKETS: ContextVar[tuple[str, ...]] = ContextVar("slack_op_buckets", default=())


@dataclass
class Op:
    """One Slack call an outbound item wants to make next."""

    kind: str
    buckets: tuple[str, ...]
    urgent: bool = False
    """Final text, a segment's last words, or the first visible text: served before updates
    that only refresh a reply still being written."""
    index: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    not_before: float = 0.0
    """Monotonic time before which the op must not run (backoff after a failure)."""


class Outbound(Protocol):
    """Something with Slack calls to make: a streaming reply, or a one-off call."""

    name: str

    @property
    def finished(self) -> bool: ...

    def next_op(self, now: float) -> Op | None: ...

    async def run(self, op: Op) -> None: ...

    def on_error(self, op: Op, exc: BaseException) -> None: ...


class Bucket:
    """Minimum spacing between calls, plus a pause after a 429."""

    __slots__ = ("interval", "next_at", "paused_until")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_at = 0.0
        self.paused_until = 0.0

    def ready_at(self) -> float:
        return max(self.next_at, self.paused_until)

    def take(self, now: float) -> None:
        self.next_at = max(now, self.next_at) + self.interval


def retry_after_of(headers: Any, default: float = 1.0) -> float:
    if not headers:
        return default
    for key, value in dict(headers).items():
        if key.lower() == "retry-after":
            raw = value[0] if isinstance(value, list | tuple) else value
            try:
                return max(0.0, float(raw))
            except (TypeError, ValueError):
                return default
    return default


class PausingRateLimitHandler(AsyncRateLimitErrorRetryHandler):
    """slack-sdk's 429 handler (sleeps Retry-After, repeats the request) that first pauses the
    scheduler buckets of the call, so no other call runs into the same limit meanwhile."""

    def __init__(self, on_pause: Callable[[tuple[str, ...], float], None], retries: int) -> None:
        super().__init__(max_retry_count=retries)
        self._on_pause = on_pause

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        if response is not None:
            method = request.url.rsplit("/", 1)[-1].split("?", 1)[0]
            metrics.rate_limited("slack", method)
            metrics.call("slack", method)  # the repeat that follows
            buckets = _BUCKETS.get()
            if buckets:
                self._on_pause(buckets, retry_after_of(response.headers) + 1.0)
        await super().prepare_for_next_attempt_async(
            state=state, request=request, response=response, error=error
        )


class _OneShot:
    """A single call through the scheduler, awaited by its caller."""

    def __init__(self, name: str, op: Op, fn: Callable[[], Awaitable[Any]]) -> None:
        self.name = name
        self._op = op
        self._fn = fn
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._tries = 0

    @property
    def finished(self) -> bool:
        return self.future.done()

    def next_op(self, now: float) -> Op | None:
        return None if self.future.done() else self._op

    async def run(self, op: Op) -> None:
        self._tries += 1
        result = await self._fn()
        if not self.future.done():
            self.future.set_result(result)

    def on_error(self, op: Op, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


def api_error(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, Slack error code) of a failed Web API call; (0, '') for other errors."""
    if not isinstance(exc, SlackApiError):
        return 0, ""
    resp = exc.response
    status = int(getattr(resp, "status_code", 0) or 0)
    data = getattr(resp, "data", None)
    error = str(data.get("error") or "") if isinstance(data, dict) else ""
    return status, error


def is_rate_limited(exc: BaseException) -> bool:
    status, error = api_error(exc)
    return status == 429 or error in ("ratelimited", "rate_limited")


class CountingWebClient(AsyncWebClient):
    """The Web API client, counting calls and the 429s that reach the caller by method
    (`kullm_adapter_platform_calls_total`, `..._429_total`; the retry handler counts the
    429s it retries)."""

    async def api_call(  # type: ignore[override]
        self, api_method: str, **kwargs: Any
    ) -> AsyncSlackResponse:
        metrics.call("slack", api_method)
        try:
            return await super().api_call(api_method, **kwargs)
        except SlackApiError as exc:
            if is_rate_limited(exc):
                metrics.rate_limited("slack", api_method)
            raise


class Scheduler:
    """Runs the outbound calls of all replies within Slack's limits (see module doc)."""

    def __init__(self, intervals: Callable[[str], float]) -> None:
        self._interval_of = intervals
        self._buckets: dict[str, Bucket] = {}
        self._items: dict[int, Outbound] = {}
        self._served: dict[int, float] = {}
        self._busy: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self.calls: Counter[str] = Counter()
        self.rate_limited = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="slack-scheduler")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for item in self._items.values():
            if isinstance(item, _OneShot) and not item.future.done():
                item.future.cancel()
        self._items.clear()

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- API -------------------------------------------------------------------------------

    def add(self, item: Outbound) -> None:
        self._items[id(item)] = item
        self._served.setdefault(id(item), 0.0)
        self.wake()

    def discard(self, item: Outbound) -> None:
        self._items.pop(id(item), None)
        self._served.pop(id(item), None)

    def wake(self) -> None:
        self._wake.set()

    def active(self) -> int:
        return len(self._items)

    def pause(self, buckets: tuple[str, ...], seconds: float) -> None:
        until = time.monotonic() + seconds
        for name in buckets:
            bucket = self._bucket(name)
            bucket.paused_until = max(bucket.paused_until, until)
        log.warning("slack rate limited on %s: pausing %.1f s", ",".join(buckets), seconds)

    def rate_limit_handler(self, retries: int) -> PausingRateLimitHandler:
        def on_pause(buckets: tuple[str, ...], seconds: float) -> None:
            self.rate_limited += 1
            self.pause(buckets, seconds)

        return PausingRateLimitHandler(on_pause, retries)

    async def call(
        self, name: str, buckets: tuple[str, ...], fn: Callable[[], Awaitable[Any]],
        *, urgent: bool = True,
    ) -> Any:
        """Run one Slack call in turn with everything else (ephemeral answers, reactions)."""
        shot = _OneShot(name, Op("call", buckets, urgent=urgent), fn)
        self.add(shot)
        try:
            return await shot.future
        finally:
            self.discard(shot)

    # -- loop ------------------------------------------------------------------------------

    def _bucket(self, name: str) -> Bucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = Bucket(self._interval_of(name))
        return bucket

    def _candidates(self, now: float) -> list[tuple[bool, float, int, Outbound, Op]]:
        out = []
        for key, item in list(self._items.items()):
            if key in self._busy:
                continue
            if item.finished:
                self.discard(item)
                continue
            op = item.next_op(now)
            if op is not None:
                out.append((not op.urgent, self._served.get(key, 0.0), key, item, op))
        out.sort(key=lambda c: (c[0], c[1]))
        return out

    def _schedule(self) -> float | None:
        """Start every op whose buckets are free; return seconds until the next may be."""
        now = time.monotonic()
        delay: float | None = None
        for _, _, key, item, op in self._candidates(now):
            buckets = [self._bucket(name) for name in op.buckets]
            at = max([op.not_before, *(b.ready_at() for b in buckets)])
            if at > now:
                delay = at - now if delay is None else min(delay, at - now)
                continue
            for b in buckets:
                b.take(now)
            self._busy.add(key)
            self._served[key] = now
            task = asyncio.create_task(self._execute(key, item, op))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return delay

    async def _loop(self) -> None:
        while True:
            # Wake-ups come with every delta of every reply; one pass per tick serves them
            # all (Slack's spacings are 0.6 s and up, so the tick costs no throughput).
            await asyncio.sleep(_TICK_S)
            self._wake.clear()
            try:
                delay = self._schedule()
            except Exception:
                log.exception("slack scheduler: unexpected error")
                delay = 1.0
            if delay is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(delay, 0.005))

    async def _execute(self, key: int, item: Outbound, op: Op) -> None:
        # Space from when the call really leaves, not from when it was scheduled: a busy
        # event loop may start it late, and Slack measures arrivals.
        started = time.monotonic()
        for name in op.buckets:
            bucket = self._bucket(name)
            bucket.next_at = max(bucket.next_at, started + bucket.interval)
        token = _BUCKETS.set(op.buckets)
        self.calls[op.kind] += 1
        try:
            await item.run(op)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_rate_limited(exc):
                self.rate_limited += 1
                resp = exc.response  # type: ignore[attr-defined]
                self.pause(op.buckets, retry_after_of(getattr(resp, "headers", None)) + 1.0)
            else:
                try:
                    item.on_error(op, exc)
                except Exception:
                    log.exception("slack: error handler of %s failed", item.name)
        finally:
            _BUCKETS.reset(token)
            self._busy.discard(key)
            self.wake()
