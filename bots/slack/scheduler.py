"""The one outbound scheduler: every Slack write of the adapter goes through it.

Replies do not call Slack themselves: they describe their next call (`SlackCall`) and the
buckets of the send budget it counts against (`SlackScopes.call`: the method per workspace by
its tier, and for posts the channel). The scheduler pulls the next op of every reply and runs
it once `SendBudget` grants a slot in each of its buckets. The budget lives in Redis, so it holds
across every replica of the adapter, and it serves the replies waiting for a bucket least
recently served first (urgent ops, such as final text, skip that line). A reply merges all
text that arrived while it waited into its next call: its op is asked for again on every try.

A 429 pauses exactly what Slack paused (`SlackScopes.on_429`: the method in the workspace;
`chat.postMessage`, the channel) for Retry-After, for every replica: slack-sdk's rate-limit
retry handler (subclassed here to write the pause) waits and repeats the same request, which
Slack had refused, so nothing is posted twice.
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

from redis.exceptions import RedisError
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from kullm_core import metrics
from kullm_core.budget import Bucket, Grant, SendBudget
from kullm_core.scopes import SlackScopes

log = logging.getLogger(__name__)

_PAUSED: ContextVar[tuple[Bucket, ...]] = ContextVar("slack_op_paused", default=())
_REDIS_RETRY_S = 0.2


@dataclass
class SlackCall:
    """One Slack call an outbound item wants to make next."""

    kind: str
    buckets: tuple[Bucket, ...]
    """The send-budget buckets the call counts against."""
    paused: tuple[Bucket, ...] = ()
    """The buckets a 429 on this call pauses."""
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

    def next_op(self, now: float) -> SlackCall | None: ...

    async def run(self, op: SlackCall) -> None: ...

    def on_error(self, op: SlackCall, exc: BaseException) -> None: ...


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
    """slack-sdk's 429 handler (sleeps Retry-After, repeats the request) that first pauses,
    in the shared budget, the scope Slack paused, so no call of any replica runs into the
    same limit meanwhile."""

    def __init__(self, on_pause: Callable[[tuple[Bucket, ...], float], Awaitable[None]],
                 retries: int) -> None:
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
            paused = _PAUSED.get()
            if paused:
                await self._on_pause(paused, retry_after_of(response.headers) + 1.0)
        await super().prepare_for_next_attempt_async(
            state=state, request=request, response=response, error=error
        )


class _OneShot:
    """A single call through the scheduler, awaited by its caller."""

    def __init__(self, name: str, op: SlackCall, fn: Callable[[], Awaitable[Any]]) -> None:
        self.name = name
        self._op = op
        self._fn = fn
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._tries = 0

    @property
    def finished(self) -> bool:
        return self.future.done()

    def next_op(self, now: float) -> SlackCall | None:
        return None if self.future.done() else self._op

    async def run(self, op: SlackCall) -> None:
        self._tries += 1
        result = await self._fn()
        if not self.future.done():
            self.future.set_result(result)

    def on_error(self, op: SlackCall, exc: BaseException) -> None:
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
    """Runs the outbound calls of all replies within the shared send budget (module doc)."""

    def __init__(self, budget: SendBudget, scopes: SlackScopes | None = None) -> None:
        self.budget = budget
        self.scopes = scopes or SlackScopes()
        self._items: dict[int, Outbound] = {}
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
        for task in list(self._tasks):
            task.cancel()
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
        self.wake()

    def discard(self, item: Outbound) -> None:
        self._items.pop(id(item), None)

    def wake(self) -> None:
        self._wake.set()

    def active(self) -> int:
        return len(self._items)

    async def pause(self, buckets: tuple[Bucket, ...], seconds: float) -> None:
        """Slack said 429: nothing more in these scopes, from any replica, for `seconds`."""
        self.rate_limited += 1
        log.warning("slack rate limited on %s: pausing %.1f s",
                    ",".join(b.name for b in buckets), seconds)
        try:
            await self.budget.pause(buckets, seconds)
        except (RedisError, OSError) as exc:
            log.warning("slack: writing the pause failed (%s)", type(exc).__name__)

    def rate_limit_handler(self, retries: int) -> PausingRateLimitHandler:
        return PausingRateLimitHandler(self.pause, retries)

    async def call(self, method: str, team: str, fn: Callable[[], Awaitable[Any]], *,
                   channel: str = "", urgent: bool = True) -> Any:
        """Run one Slack call of `method` in turn with everything else (ephemeral answers,
        reactions, profiles)."""
        op = SlackCall("call", self.scopes.call(team, method, channel),
                paused=self.scopes.on_429(team, method, channel), urgent=urgent)
        shot = _OneShot(method, op, fn)
        self.add(shot)
        try:
            return await shot.future
        finally:
            self.discard(shot)

    # -- loop ------------------------------------------------------------------------------

    def _schedule(self) -> float | None:
        """Start a runner for every item with an op due, urgent ones first; return seconds
        until the next op held back by its backoff is due."""
        now = time.monotonic()
        delay: float | None = None
        due: list[tuple[bool, int, Outbound]] = []
        for key, item in list(self._items.items()):
            if key in self._busy:
                continue
            if item.finished:
                self.discard(item)
                continue
            op = item.next_op(now)
            if op is None:
                continue
            if op.not_before > now:
                wait = op.not_before - now
                delay = wait if delay is None else min(delay, wait)
                continue
            due.append((not op.urgent, key, item))
        for _, key, item in sorted(due, key=lambda d: d[0]):
            self._busy.add(key)
            task = asyncio.create_task(self._execute(key, item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return delay

    async def _loop(self) -> None:
        while True:
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

    async def _grant(self, item: Outbound) -> tuple[SlackCall, Grant] | None:
        """A slot for the item's next op, asking for the op again on every try (text that
        arrived meanwhile is merged, an op that became urgent skips the line)."""
        most = self.budget.stale_us / 1_000_000 / 4
        while id(item) in self._items:
            op = item.next_op(time.monotonic())
            if op is None or op.not_before > time.monotonic():
                return None
            got = await self.budget.try_acquire(op.buckets, reply=item.name, urgent=op.urgent)
            if isinstance(got, Grant):
                return op, got
            await asyncio.sleep(min(got.wait_s, most))
        return None

    async def _execute(self, key: int, item: Outbound) -> None:
        try:
            granted = await self._grant(item)
        except (RedisError, OSError) as exc:
            log.warning("slack: send budget unavailable (%s); retrying", type(exc).__name__)
            await asyncio.sleep(_REDIS_RETRY_S)
            granted = None
        if granted is None:
            self._busy.discard(key)
            self.wake()
            return
        op, grant = granted
        token = _PAUSED.set(op.paused)
        self.calls[op.kind] += 1
        try:
            await item.run(op)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_rate_limited(exc):
                resp = exc.response  # type: ignore[attr-defined]
                await self.pause(op.paused, retry_after_of(getattr(resp, "headers", None)) + 1.0)
            else:
                try:
                    item.on_error(op, exc)
                except Exception:
                    log.exception("slack: error handler of %s failed", item.name)
        finally:
            _PAUSED.reset(token)
            with contextlib.suppress(RedisError, OSError):
                await asyncio.shield(self.budget.release(grant))
            self._busy.discard(key)
            self.wake()
