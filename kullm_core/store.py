"""Conversation store: one Redis list per conversation, one element per exchange."""

from __future__ import annotations

import logging
from typing import Protocol

from redis.asyncio import Redis

from kullm_core.keys import Keys
from kullm_core.redis_text import as_str
from kullm_core.settings import Settings
from kullm_core.wire import ConversationRef, Turn, parse_turn

log = logging.getLogger(__name__)

# Remove every turn of one user from a conversation; delete the list when nothing is left.
# Returns the job ids of the removed turns (their reply streams hold the same text).
_FORGET_LUA = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local kept = {}
local removed = {}
for _, raw in ipairs(items) do
  local ok, obj = pcall(cjson.decode, raw)
  if ok and type(obj) == 'table' and obj['user_id'] == ARGV[1] then
    table.insert(removed, tostring(obj['job_id']))
  else
    table.insert(kept, raw)
  end
end
if #removed > 0 then
  redis.call('DEL', KEYS[1])
  if #kept > 0 then
    redis.call('RPUSH', KEYS[1], unpack(kept))
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
end
return removed
"""

# Remove the dead letters of one user's jobs (they hold the whole job, text included).
# Returns their job ids.
_FORGET_DEAD_LUA = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local kept = {}
local removed = {}
for _, raw in ipairs(items) do
  local mine = false
  local ok, rec = pcall(cjson.decode, raw)
  if ok and type(rec) == 'table' and type(rec['job']) == 'string' then
    local ok2, job = pcall(cjson.decode, rec['job'])
    if ok2 and type(job) == 'table' and type(job['user']) == 'table'
        and job['user']['platform'] == ARGV[1] and job['user']['id'] == ARGV[2] then
      mine = true
      table.insert(removed, tostring(job['id']))
    end
  end
  if not mine then table.insert(kept, raw) end
end
if #removed > 0 then
  redis.call('DEL', KEYS[1])
  if #kept > 0 then redis.call('RPUSH', KEYS[1], unpack(kept)) end
end
return removed
"""


class ConversationStore(Protocol):
    """History of conversations. Writes of finished turns happen in the queue's commit script
    (atomically with the reply's `done` event); this seam reads, resets and forgets."""

    async def history(self, conv: ConversationRef) -> list[Turn]: ...

    async def reset(self, conv: ConversationRef) -> bool: ...

    async def forget_user(self, platform: str, user_id: str,
                          job_ids: list[str] | None = None) -> int: ...

    async def conversations_of(self, platform: str, user_id: str) -> list[str]: ...


class RedisConversationStore:
    """`ConversationStore` on Redis lists (see `kullm_core.keys` for lifetimes)."""

    def __init__(self, redis: Redis, keys: Keys, retention_s: float, max_turns: int) -> None:
        self._r = redis
        self._k = keys
        self.retention_ms = int(retention_s * 1000)
        self.max_turns = max_turns
        self._forget = redis.register_script(_FORGET_LUA)
        self._forget_dead = redis.register_script(_FORGET_DEAD_LUA)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> RedisConversationStore:
        h = settings.history
        return cls(redis, Keys(settings.redis.prefix), h.retention_hours * 3600, h.max_turns)

    async def __aenter__(self) -> RedisConversationStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def history(self, conv: ConversationRef) -> list[Turn]:
        return await self.history_by_key(conv.key)

    async def history_by_key(self, conv_key: str) -> list[Turn]:
        raw = await self._r.lrange(self._k.conv(conv_key), 0, -1)
        turns = []
        for item in raw:
            try:
                turns.append(parse_turn(item))
            except ValueError:
                log.warning("conversation %s: skipping an unreadable turn", conv_key)
        return turns

    async def reset(self, conv: ConversationRef) -> bool:
        return bool(await self._r.delete(self._k.conv(conv.key)))

    async def conversations_of(self, platform: str, user_id: str) -> list[str]:
        members = await self._r.smembers(self._k.user_index(platform, user_id))
        return sorted(as_str(m) for m in members)

    async def forget_user(self, platform: str, user_id: str, job_ids: list[str] | None = None
                          ) -> int:
        """Delete everything stored of this user: every turn they wrote in every conversation
        (shared ones keep the others' turns), their dead letters, the reply streams of their
        jobs (`job_ids` plus those found in history and dead letters) and the indexes.
        Returns the turns removed.

        Left on purpose, none holding the user's text: the `rate:`/`quota:` counters
        (forgetting must not reset a quota), `dedupe:`/`done:` markers (job ids only; a
        redelivered message is still answered once) and adapter update dedupe (`seen:`).
        """
        jobs = set(job_ids or ())
        removed = 0
        for conv_key in await self.conversations_of(platform, user_id):
            ids = await self._forget(keys=[self._k.conv(conv_key)],
                                     args=[user_id, self.retention_ms])
            removed += len(ids)
            jobs.update(as_str(i) for i in ids)
        jobs.update(as_str(i) for i in await self._forget_dead(keys=[self._k.dead],
                                                          args=[platform, user_id]))
        keys = [self._k.reply(j) for j in sorted(jobs)]
        keys += [self._k.user_index(platform, user_id), self._k.user_jobs(platform, user_id)]
        for start in range(0, len(keys), 500):
            await self._r.delete(*keys[start:start + 500])
        log.info("forgot user %s:%s (%d turns, %d jobs)", platform, user_id, removed, len(jobs))
        return removed

