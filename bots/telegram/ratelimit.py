"""Telegram's published send limits, kept in Redis so that every adapter process (webhook
replicas, a restarted process) shares one budget per chat and one overall.

Why not `aiolimiter` / PTB's `AIORateLimiter` / `asyncio-throttle`: they count in one process
only, so two replicas (or a process and its successor after a restart) would each spend a
group's whole budget. `aiolimiter` is also a leaky bucket, which lets a burst through and
then refills, so a window of the limit's length can hold close to twice the limit. This is a
sliding window in a Redis sorted set, checked and reserved atomically in Lua against Redis's
own clock. A call holds a reservation while in flight and is stamped when its response
arrived, after Telegram received it, so Telegram can never see more than the limit inside
one window.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from kullm_core.settings import TelegramSettings

# Scores are microseconds of Redis TIME. A reservation in flight is scored in the future
# (now + inflight) so that a process that dies mid-call frees it on its own.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
local by = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
  local n = redis.call('ZCARD', key)
  if n >= limit then
    local kth = redis.call('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')
    local score = tonumber(kth[2])
    local w = score + period - now
    if score > now and string.sub(kth[1], 1, 6) ~= 'pause:' then
      w = tonumber(ARGV[1])  -- held by a call in flight: look again soon
    end
    if w > wait then wait = w; by = i end
  end
end
if wait > 0 then return {wait, by} end
local inflight = tonumber(ARGV[#ARGV])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + inflight, ARGV[#ARGV - 1])
  local ttl = math.floor((tonumber(ARGV[2 * i + 1]) + inflight) / 500)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return {0, 0}
"""

# Stamp a finished call with the time its response arrived.
_RELEASE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i, key in ipairs(KEYS) do redis.call('ZADD', key, 'XX', now, ARGV[1]) end
return 1
"""

# Flood control: nothing goes into the chat before `now + seconds`.
_PAUSE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local score = now + tonumber(ARGV[1]) - tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], score, 'pause:' .. ARGV[3])
local ttl = math.floor((tonumber(ARGV[1]) + tonumber(ARGV[2])) / 1000) + 1000
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""

_US = 1_000_000
_POLL_S = 0.02  # how soon to look again when the slot is held by a call in flight
_INTERIM_SHARE = 0.8  # interim updates leave a fifth of the overall budget to new replies


@dataclass(frozen=True)
class Limits:
    """What one bot may send. Edits and drafts count like messages."""

    chat_interval_s: float = 1.0
    """Minimum time between two sends into one chat (Telegram: about one per second)."""
    group_limit: int = 20
    group_period_s: float = 60.0
    """At most `group_limit` sends per `group_period_s` into one group (20 per minute)."""
    global_limit: int = 30
    global_period_s: float = 1.0
    """At most `global_limit` sends per `global_period_s` over all chats (30 per second)."""

    @classmethod
    def from_settings(cls, s: TelegramSettings) -> Limits:
        return cls(
            chat_interval_s=s.min_edit_interval_s,
            group_limit=s.group_messages_per_minute,
            global_limit=s.global_messages_per_second,
        )

    @property
    def group_interval_s(self) -> float:
        """Even pacing inside a group. A burst would spend the minute's budget in seconds and
        leave a final answer waiting for the window to slide; paced, `group_limit` per
        `group_period_s` is never exceeded."""
        return max(self.chat_interval_s, self.group_period_s / self.group_limit)

    def interval(self, chat_id: int) -> float:
        # Groups, supergroups (and channels) have negative ids; private chats positive ones.
        return self.group_interval_s if chat_id < 0 else self.chat_interval_s


class RedisRateLimiter:
    """Slots for sends into a chat: one per chat interval, `global_limit` per period overall."""

    def __init__(self, redis: Redis, namespace: str, limits: Limits, inflight_s: float = 15.0):
        """`namespace`: key prefix of one bot's budget (e.g. ``kullm:tg:rate:<bot id>``)."""
        self.r = redis
        self.namespace = namespace
        self.limits = limits
        self.inflight_us = int(inflight_s * _US)
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._pause = redis.register_script(_PAUSE_LUA)

    def chat_key(self, chat_id: int) -> str:
        return f"{self.namespace}:{chat_id}"

    @property
    def global_key(self) -> str:
        return f"{self.namespace}:all"

    async def acquire(self, chat_id: int, urgent: bool = True) -> str:
        """Wait for a slot in the chat and overall; returns the reservation's token."""
        while True:
            token, wait, _ = await self.try_acquire(chat_id, urgent)
            if token is not None:
                return token
            await asyncio.sleep(wait)

    async def try_acquire(self, chat_id: int, urgent: bool = True
                          ) -> tuple[str | None, float, bool]:
        """(token, 0, False) when a slot was reserved, else (None, seconds to wait, whether
        the overall budget is what is full). Non-urgent calls (interim updates) may fill only
        part of the overall budget."""
        token = uuid.uuid4().hex
        lim = self.limits
        overall = lim.global_limit if urgent else max(1, int(lim.global_limit * _INTERIM_SHARE))
        args: list[int | str] = [
            int(_POLL_S * _US),
            1, int(lim.interval(chat_id) * _US),
            overall, int(lim.global_period_s * _US),
            token, self.inflight_us,
        ]
        keys = [self.chat_key(chat_id), self.global_key]
        wait_us, by = (int(x) for x in await self._acquire(keys=keys, args=args))
        if wait_us <= 0:
            return token, 0.0, False
        return None, wait_us / _US, by == 2

    async def release(self, chat_id: int, token: str) -> None:
        """The call's response arrived: its slot counts from now."""
        await self._release(keys=[self.chat_key(chat_id), self.global_key], args=[token])

    async def cancel(self, chat_id: int, token: str) -> None:
        """Nothing was sent after all."""
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.zrem(self.chat_key(chat_id), token)
            pipe.zrem(self.global_key, token)
            await pipe.execute()

    async def pause(self, chat_id: int, seconds: float) -> None:
        """Telegram said 429: no process sends into this chat for `seconds`."""
        period = int(self.limits.interval(chat_id) * _US)
        await self._pause(keys=[self.chat_key(chat_id)],
                          args=[int(seconds * _US), period, uuid.uuid4().hex])
