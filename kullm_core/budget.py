"""One send budget for platform writes, shared through Redis by every adapter replica.

A platform declares its limits as named `Bucket`s (a sliding window: at most `limit` sends per
`period_s`) and, for each call, the buckets it counts against (`kullm_core.scopes`).
`SendBudget.acquire` waits until every bucket of the call has room, reserves a slot in each
atomically (one Lua script, Redis's own clock), and `release` stamps the slot
with the time the platform's response arrived, so the platform, which counts arrivals, never
sees more than the limit inside one window, whichever replica sent. A slot in flight is
scored in the future (now + `inflight_s`) and its holder pushes that on while the call lasts,
so a replica dying mid-call frees its slots `inflight_s` later, alone (a fixed bound as long
as the longest call would hold the chats it was writing to silent that long).

A 429 pauses exactly the scope the platform paused (`pause`; `*.on_429` says which): every
replica's next acquire on a paused bucket waits out the Retry-After, checked inside the same
script, so no call is granted inside the window once the pause is written (a call already in
flight when the 429 arrived cannot be recalled).

Fair sharing: a non-urgent call names its `reply`. When a bucket has fewer free slots than
replies waiting for it, the slots go to the replies served least recently (a waiting line
per bucket, in Redis, so it holds across replicas), so every streaming reply visibly
progresses while the budget allows, however often one of them asks. Urgent calls (a final
answer, the first visible text) skip the line, and `Bucket.reserve` keeps slots that only
urgent calls may take. A waiter that stops asking leaves the line after `stale_s`.

Why hand-written and not `limits` (its Redis moving window): `limits` keeps a list of client
timestamps per key (LPUSH, LTRIM to the limit) and tests one key per call; it takes the time
from each client (replicas' clocks differ), cannot reserve several keys at once (a call
counted against chat, group and global would be checked key by key, with races between
them), counts a call when it is asked for rather than when its response arrived, has no
notion of a slot held by a call in flight, of a pause by Retry-After, or of whose turn it is,
and answers a refusal without the time to wait (a second round-trip). The sorted set here
costs the same O(log n) per entry and answers all of it in one script.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import Redis

from kullm_core.keys import Keys
from kullm_core.redis_checks import REDIS_TROUBLE, RedisGuard

_US = 1_000_000
_RELEASE_RETRY_S = 5.0
"""How long a failed release is tried again (a Redis restart or failover)."""

# Per bucket i, KEYS[5i-4..5i]: window zset, pause string, line zset (score: last served),
# alive zset (score: last ask), served hash. ARGV: poll_us, stale_us, token, inflight_us,
# reply ('' = no line), urgent (0/1), then per bucket: limit, period_us, reserve.
# Returns {wait_us, blocking bucket index, reason 0 granted/1 full/2 paused/3 turn, now_us}.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local poll, stale = tonumber(ARGV[1]), tonumber(ARGV[2])
local token, inflight, reply = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local urgent = ARGV[6] == '1'
local nb = #KEYS / 5
local wait, by, why = 0, 0, 0
local free = {}
for i = 1, nb do
  local w, p = KEYS[5*i-4], KEYS[5*i-3]
  local limit, period = tonumber(ARGV[3+3*i+1]), tonumber(ARGV[3+3*i+2])
  if not urgent then limit = math.max(1, limit - tonumber(ARGV[3+3*i+3])) end
  redis.call('ZREMRANGEBYSCORE', w, '-inf', now - period)
  local paused = redis.call('PTTL', p) * 1000
  if paused > wait then wait, by, why = paused, i, 2 end
  local n = redis.call('ZCARD', w)
  free[i] = limit - n
  if n >= limit then
    local kth = redis.call('ZRANGE', w, n - limit, n - limit, 'WITHSCORES')
    local score = tonumber(kth[2])
    local ww = score + period - now
    if score > now then ww = poll end
    if ww > wait then wait, by, why = ww, i, 1 end
  end
end
if reply ~= '' and not urgent then
  for i = 1, nb do
    local line, alive, served = KEYS[5*i-2], KEYS[5*i-1], KEYS[5*i]
    local gone = redis.call('ZRANGEBYSCORE', alive, '-inf', now - stale)
    for _, m in ipairs(gone) do redis.call('ZREM', line, m); redis.call('ZREM', alive, m) end
    if wait > 0 and free[i] > 0 then
      redis.call('ZREM', line, reply); redis.call('ZREM', alive, reply)
    else
      local last = tonumber(redis.call('HGET', served, reply) or '0')
      redis.call('ZADD', line, 'NX', last, reply)
      redis.call('ZADD', alive, now, reply)
      local ttl = math.floor(stale / 1000) + 1000
      redis.call('PEXPIRE', line, ttl); redis.call('PEXPIRE', alive, ttl)
      if wait == 0 and redis.call('ZRANK', line, reply) >= free[i] then
        wait, by, why = poll, i, 3
      end
    end
  end
end
if wait > 0 then return {wait, by, why, now} end
for i = 1, nb do
  local w, period = KEYS[5*i-4], tonumber(ARGV[3+3*i+2])
  redis.call('ZADD', w, now + inflight, token)
  local ttl = math.floor((2 * period + inflight) / 1000)
  if redis.call('PTTL', w) < ttl then redis.call('PEXPIRE', w, ttl) end
  if reply ~= '' then
    redis.call('ZREM', KEYS[5*i-2], reply); redis.call('ZREM', KEYS[5*i-1], reply)
    redis.call('HSET', KEYS[5*i], reply, now)
    redis.call('PEXPIRE', KEYS[5*i], ttl + math.floor(stale / 1000))
  end
end
return {0, 0, 0, now}
"""

# KEYS: window zsets; ARGV[1]: token. The call's response arrived: its slot counts from now.
_RELEASE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i, key in ipairs(KEYS) do redis.call('ZADD', key, 'XX', now, ARGV[1]) end
return now
"""

# KEYS: window zsets; ARGV[1]: inflight_us, then per key: token, key TTL (ms). A call still in
# flight (scored in the future) counts until now + inflight_us; a released one is left alone.
_EXTEND_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i, key in ipairs(KEYS) do
  local token, ttl = ARGV[2*i], tonumber(ARGV[2*i+1])
  local score = redis.call('ZSCORE', key, token)
  if score and tonumber(score) > now then
    redis.call('ZADD', key, 'XX', now + tonumber(ARGV[1]), token)
    if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
  end
end
return now
"""

# KEYS: pause keys; ARGV[1]: ms. Extends (never shortens) each pause. Returns Redis now (us).
_PAUSE_LUA = """
local t = redis.call('TIME')
for i, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < tonumber(ARGV[1]) then
    redis.call('SET', key, '1', 'PX', ARGV[1])
  end
end
return tonumber(t[1]) * 1000000 + tonumber(t[2])
"""


@dataclass(frozen=True)
class Bucket:
    """A platform limit: at most `limit` sends per `period_s` (sliding) in scope `name`."""

    name: str
    limit: int
    period_s: float
    reserve: int = 0
    """Slots only urgent calls may take (new replies, final answers)."""


@dataclass(frozen=True)
class Grant:
    token: str
    buckets: tuple[Bucket, ...]
    at_us: int
    """Redis time of the grant, in microseconds."""


@dataclass(frozen=True)
class Refusal:
    wait_s: float
    bucket: Bucket
    reason: str
    """full | paused | turn (others waiting were served less recently)"""


_REASONS = {1: "full", 2: "paused", 3: "turn"}


class SendBudget:
    """Named sliding-window buckets of one platform account, in Redis (see module doc)."""

    def __init__(self, redis: Redis, keys: Keys, namespace: str, *, inflight_s: float = 5.0,
                 poll_s: float = 0.02, stale_s: float = 2.0) -> None:
        """`namespace`: one account's budget (e.g. ``tg:<bot id>``, ``slack:<app id>``)."""
        self.r = redis
        self.keys = keys
        self.namespace = namespace
        self.inflight_us = int(inflight_s * _US)
        self.poll_us = int(poll_s * _US)
        self.stale_us = int(stale_s * _US)
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._guard = RedisGuard(f"send budget {namespace}")
        self._pause = redis.register_script(_PAUSE_LUA)
        self._extend = redis.register_script(_EXTEND_LUA)
        self._inflight: dict[str, Grant] = {}
        """This process's calls in flight (granted, neither released nor cancelled)."""
        self._keeper: asyncio.Task[None] | None = None

    def key(self, bucket: Bucket) -> str:
        return self.keys.budget(self.namespace, bucket.name)

    async def try_acquire(self, buckets: Sequence[Bucket], *, reply: str = "",
                          urgent: bool = False) -> Grant | Refusal:
        """A slot in every bucket now, or how long to wait and why."""
        keys: list[str] = []
        args: list[int | str] = [self.poll_us, self.stale_us, uuid.uuid4().hex,
                                 self.inflight_us, reply, int(urgent)]
        for b in buckets:
            base = self.key(b)
            keys += [base, f"{base}:pause", f"{base}:line", f"{base}:alive", f"{base}:served"]
            args += [b.limit, int(b.period_s * _US), b.reserve]
        wait_us, by, why, now = (int(x) for x in await self._acquire(keys=keys, args=args))
        if wait_us <= 0:
            return self._hold(Grant(str(args[2]), tuple(buckets), now))
        return Refusal(wait_us / _US, buckets[by - 1], _REASONS.get(why, "full"))

    async def acquire(self, buckets: Sequence[Bucket], *, reply: str = "",
                      urgent: bool = False) -> Grant:
        """Wait for a slot in every bucket of the call (a waiter keeps its place in line by
        asking again at least every `stale_s / 4`)."""
        most = self.stale_us / _US / 4
        while True:
            got = await self.try_acquire(buckets, reply=reply, urgent=urgent)
            if isinstance(got, Grant):
                return got
            await asyncio.sleep(min(got.wait_s, most))

    async def release(self, grant: Grant) -> int:
        """The call's response arrived: its slots count from now. Returns Redis time (us).

        A release lost to a Redis blip would leave the slots in flight for `inflight_s`
        (the chat held silent that long after the blip), so it is tried again for up to
        `_RELEASE_RETRY_S`; stamped later than the response, the slots count a little longer,
        never shorter."""
        self._drop(grant)
        keys = [self.key(b) for b in grant.buckets]
        return int(await self._guard.call(lambda: self._release(keys=keys, args=[grant.token]),
                                          "releasing a send slot", budget_s=_RELEASE_RETRY_S))

    async def cancel(self, grant: Grant) -> None:
        """Nothing was sent after all: the slots are free again."""
        self._drop(grant)
        async with self.r.pipeline(transaction=False) as pipe:
            for b in grant.buckets:
                pipe.zrem(self.key(b), grant.token)
            await pipe.execute()

    def _hold(self, grant: Grant) -> Grant:
        self._inflight[grant.token] = grant
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep_in_flight(),
                                               name=f"send-budget-{self.namespace}")
        return grant

    def _drop(self, grant: Grant) -> None:
        self._inflight.pop(grant.token, None)
        if not self._inflight and self._keeper is not None:
            self._keeper.cancel()  # nothing left to keep: no task sleeping on
            self._keeper = None

    async def _keep_in_flight(self) -> None:
        """While calls are in flight, push their slots' end on (every third of `inflight_s`)."""
        tries = 0
        while self._inflight:
            await asyncio.sleep(self.inflight_us / _US / 3)
            keys: list[str] = []
            args: list[int | str] = [self.inflight_us]
            for grant in list(self._inflight.values()):
                for b in grant.buckets:
                    keys.append(self.key(b))
                    args += [grant.token, (2 * int(b.period_s * _US) + self.inflight_us) // 1000]
            if not keys:
                return
            try:
                await self._extend(keys=keys, args=args)
            except REDIS_TROUBLE as exc:  # the slots lapse meanwhile: counted as sent then
                tries += 1
                self._guard.failed(exc, "keeping send slots in flight", tries)
                continue
            tries = 0
            self._guard.ok()

    async def pause(self, buckets: Sequence[Bucket], seconds: float) -> int:
        """The platform said 429 with Retry-After `seconds`: no replica sends in these
        scopes before then. Returns the Redis time (us) the pause starts from."""
        ms = max(1, int(seconds * 1000))
        return int(await self._pause(keys=[f"{self.key(b)}:pause" for b in buckets],
                                     args=[ms]))

    @asynccontextmanager
    async def slot(self, buckets: Sequence[Bucket], *, reply: str = "",
                   urgent: bool = False) -> AsyncIterator[Grant]:
        """`async with budget.slot(...)`: one platform call; it counts from its response."""
        grant = await self.acquire(buckets, reply=reply, urgent=urgent)
        try:
            yield grant
        finally:
            await self.release(grant)
