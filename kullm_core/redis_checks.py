"""Living with Redis trouble: outage tracking with bounded backoff, and the start-up checks.

Every Redis error the worker meets is treated as transient (connection refused, timeouts,
`LOADING` after a restart, `READONLY` during a failover, `OOM` under `noeviction`, `NOGROUP`
on a fresh server): the caller waits a bounded, jittered delay and tries again. One WARNING
marks the start of an outage and one INFO its end (how long, how many errors), so a server
that is down for an hour costs a few hundred sleeps and two log lines, not a busy loop.

History and the job queue are the bot's only copy of their data: a server that evicts keys
under memory pressure loses them silently. `check_memory_policy` refuses such a server at
start (or warns loudly when `redis.allow_eviction` is set).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from kullm_core.errors import EvictionPolicyError
from kullm_core.redis_text import as_str

log = logging.getLogger(__name__)

T = TypeVar("T")

REDIS_TROUBLE = (RedisError, OSError)
"""What a Redis call raises when the server is away, restarting, full or failing over
(`TimeoutError`, also `asyncio.timeout`'s, is an `OSError`)."""

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0


def is_oom(exc: BaseException) -> bool:
    """`maxmemory` reached under `noeviction`: writes are refused until memory is freed."""
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and str(exc).startswith("OOM")
    )


def is_nogroup(exc: BaseException) -> bool:
    """The consumer group is gone (a failover to an empty server, a flushed database)."""
    return isinstance(exc, ResponseError) and "NOGROUP" in str(exc)


def backoff(tries: int, base_s: float = BACKOFF_MIN_S, cap_s: float = BACKOFF_MAX_S) -> float:
    """Delay before try number `tries` + 1: exponential from `base_s`, capped, jittered."""
    step = min(cap_s, base_s * 2 ** min(max(tries, 1) - 1, 16))
    return step * random.uniform(0.5, 1.0)


class Outage:
    """Tracks one kind of trouble shared by several loops: one warning, one summary.

    `failed` records an error and returns how long its caller waits before trying again:
    exponential in the caller's own consecutive failures (`tries`; a caller that just
    joined a long outage starts short, so it is not held seconds after the server is back),
    jittered, bounded. `ok` ends the outage. Loops share one instance so an outage is logged
    once per process.
    """

    def __init__(self, what: str, owner: str, *, base_s: float = BACKOFF_MIN_S,
                 cap_s: float = BACKOFF_MAX_S) -> None:
        self.what = what
        self.owner = owner
        self.base_s = base_s
        self.cap_s = cap_s
        self.since = 0.0
        self.errors = 0
        self.recovered_at = 0.0
        """Monotonic time the last outage ended (0: none yet)."""

    @property
    def active(self) -> bool:
        return self.errors > 0

    def failed(self, exc: BaseException, doing: str, tries: int = 0) -> float:
        if not self.errors:
            self.since = time.monotonic()
            log.warning("%s: Redis %s while %s (%s: %s); retrying with backoff",
                        self.owner, self.what, doing, type(exc).__name__, exc)
        self.errors += 1
        return backoff(tries or self.errors, self.base_s, self.cap_s)

    def ok(self) -> None:
        if self.errors:
            self.recovered_at = time.monotonic()
            log.info("%s: Redis %s for %.1f s (%d failed calls); recovered",
                     self.owner, self.what, self.recovered_at - self.since, self.errors)
            self.errors = 0


def raise_if_cancelling(exc: BaseException | None = None) -> None:
    """Re-raise a cancel that surfaced as Redis trouble, or that a Redis call swallowed.

    A cancel (a job timeout's, a stop's) that lands during a Redis call can come out of
    redis-py as its own error, or as a `TimeoutError` (an `OSError`, so in `REDIS_TROUBLE`);
    a loop that caught it as an outage would swallow the cancel. A cancel can also be lost
    with no error at all (seen with redis-py 8.1: the worker's XREADGROUP went on returning
    normally, its task still cancelling): loops that only end on a cancel call this after
    each read too.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


class RedisGuard:
    """The two outages a worker tells apart: the server unreachable, and the server full.

    They are separate because reads keep working while memory is full: a successful read
    must not end (and re-open, and log again) an out-of-memory outage.
    """

    def __init__(self, owner: str, *, base_s: float = BACKOFF_MIN_S,
                 cap_s: float = BACKOFF_MAX_S) -> None:
        self.down = Outage("unavailable", owner, base_s=base_s, cap_s=cap_s)
        self.full = Outage("out of memory (maxmemory reached with noeviction)", owner,
                           base_s=base_s, cap_s=cap_s)

    def failed(self, exc: BaseException, doing: str, tries: int = 0) -> float:
        """Record `exc`; the delay before the caller tries again. An `exc` that was the
        caller's own cancel (`raise_if_cancelling`) is raised as that cancel instead."""
        raise_if_cancelling(exc)
        return (self.full if is_oom(exc) else self.down).failed(exc, doing, tries)

    def ok(self, wrote: bool = False) -> None:
        self.down.ok()
        if wrote:
            self.full.ok()

    @property
    def recovered_at(self) -> float:
        return max(self.down.recovered_at, self.full.recovered_at)

    async def call(
        self, op: Callable[[], Awaitable[T]], doing: str, *, wrote: bool = True,
        give_up: Callable[[], bool] = lambda: False, budget_s: float | None = None,
    ) -> T:
        """Run `op` until it succeeds; between tries wait the backoff delay.

        Raises the last Redis error when `give_up()` turns true or `budget_s` runs out.
        """
        deadline = None if budget_s is None else time.monotonic() + budget_s
        tries = 0
        while True:
            try:
                result = await op()
            except REDIS_TROUBLE as exc:
                tries += 1
                delay = self.failed(exc, doing, tries)
                if give_up() or (deadline is not None and time.monotonic() + delay > deadline):
                    raise
                await asyncio.sleep(delay)
                continue
            self.ok(wrote)
            return result


async def check_memory_policy(redis: Redis, allow_eviction: bool, owner: str) -> str:
    """Refuse a server that evicts keys: history and queue need `maxmemory-policy noeviction`.

    Returns the policy ("" when the server does not let us read it: CONFIG disabled or not
    permitted, as on many managed services; then a warning asks the operator to check).

    Raises:
        EvictionPolicyError: on an evicting policy unless `allow_eviction`.
    """
    try:
        reply: Any = await redis.config_get("maxmemory-policy")
    except ResponseError as exc:
        log.warning("%s: cannot read maxmemory-policy (%s); make sure the server uses "
                    "noeviction, or history and queued messages can be lost", owner, exc)
        return ""
    policy = as_str(reply.get("maxmemory-policy") or reply.get(b"maxmemory-policy") or b"")
    if not policy or policy == "noeviction":
        return policy
    if not allow_eviction:
        raise EvictionPolicyError(
            f"Redis maxmemory-policy is `{policy}`: it deletes history and queued messages when "
            "memory runs out. Set `maxmemory-policy noeviction` on the server, or set "
            "`redis.allow_eviction = true` to run anyway"
        )
    log.warning("%s: Redis maxmemory-policy is %s and redis.allow_eviction is set: history and "
                "queued messages WILL BE LOST when the server runs out of memory", owner, policy)
    return policy

