"""The job queue's Lua scripts (each runs atomically in Redis), with their calls typed.

Each script reads its KEYS and ARGV into named locals on its first lines; the dataclass beside
it lists the same names in the same order, and builds the lists a call passes
(`keys()`, `args()`), so a call site names every value and cannot swap two positions
(`tests/core/test_queue_scripts.py` checks both sides agree). Events a script writes are
serialised in Python from `kullm_core.wire`, never spelled out in Lua.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from kullm_core.wire import QueuedEvent

_POSITION_SLOT = 987654321
_QUEUED_PREFIX, _QUEUED_SUFFIX = QueuedEvent(position=_POSITION_SLOT).dumps().split(
    str(_POSITION_SLOT)
)
QUEUED_TYPE: str = QueuedEvent.model_fields["type"].default
"""The `type` of the event that says a job is still waiting (from `wire.py`)."""


class _Call:
    """Fields listed in `KEYS` are the script's KEYS, the others its ARGV, in field order."""

    KEYS: ClassVar[tuple[str, ...]] = ()

    def keys(self) -> list[str]:
        return [getattr(self, name) for name in self.KEYS]

    def args(self) -> list[str | int]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if f.name not in self.KEYS]


# Returns {1, entry id, position} | {0, existing job id, 0} (duplicate) | {-1, '', waiting}.
ENQUEUE_LUA = """
local dedupe, jobs, reply, order = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, job, dedupe_ttl, max_pending = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local group, reply_ttl, order_ttl = ARGV[5], ARGV[6], ARGV[7]
local queued_prefix, queued_suffix = ARGV[8], ARGV[9]
if redis.call('SET', dedupe, job_id, 'NX', 'EX', dedupe_ttl) == false then
  return {0, redis.call('GET', dedupe) or '', 0}
end
local n = redis.call('XLEN', jobs)
local inflight = redis.call('XPENDING', jobs, group)[1]
if n >= tonumber(max_pending) then
  redis.call('DEL', dedupe)
  return {-1, '', n - inflight}
end
local id = redis.call('XADD', jobs, '*', 'id', job_id, 'job', job)
redis.call('RPUSH', order, id)
redis.call('EXPIRE', order, order_ttl)
local position = n - inflight + 1
redis.call('XADD', reply, '*', 'e', queued_prefix .. position .. queued_suffix)
redis.call('EXPIRE', reply, reply_ttl)
return {1, id, position}
"""


@dataclass(frozen=True)
class EnqueueCall(_Call):
    """Add a job unless its source message was already enqueued or the queue is full; its
    reply stream gets the first `queued` event."""

    KEYS: ClassVar[tuple[str, ...]] = ("dedupe", "jobs", "reply", "order")
    dedupe: str
    jobs: str
    reply: str
    order: str
    job_id: str
    job: str
    dedupe_ttl: int
    max_pending: int
    group: str
    reply_ttl: int
    order_ttl: int
    queued_prefix: str = _QUEUED_PREFIX
    queued_suffix: str = _QUEUED_SUFFIX


# Returns 1 when this call answered the job, 0 when it was already answered.
COMMIT_LUA = """
local done, history, user_index, reply = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local jobs, order, active, quota = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local job_id, turn, event, retention_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local max_turns, reply_ttl, entry, marker_ttl = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local replace_last, conversation, group, tokens = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local quota_ttl = ARGV[13]
if redis.call('SET', done, '1', 'NX', 'EX', marker_ttl) == false then
  redis.call('XACK', jobs, group, entry)
  redis.call('XDEL', jobs, entry)
  redis.call('LREM', order, 0, entry)
  return 0
end
if turn ~= '' then
  if replace_last == '1' then redis.call('RPOP', history) end
  redis.call('RPUSH', history, turn)
  redis.call('LTRIM', history, -tonumber(max_turns), -1)
  redis.call('PEXPIRE', history, retention_ms)
  redis.call('SADD', user_index, conversation)
  redis.call('PEXPIRE', user_index, retention_ms)
end
if tonumber(tokens) > 0 then
  redis.call('INCRBY', quota, tokens)
  redis.call('EXPIRE', quota, quota_ttl)
end
redis.call('XADD', reply, '*', 'e', event)
redis.call('EXPIRE', reply, reply_ttl)
redis.call('XACK', jobs, group, entry)
redis.call('XDEL', jobs, entry)
redis.call('LREM', order, 0, entry)
if redis.call('GET', active) == job_id then redis.call('DEL', active) end
return 1
"""


@dataclass(frozen=True)
class CommitCall(_Call):
    """Atomically: history turn (if any), quota, the terminal event, ack, order, and the
    conversation's active marker released if this job still owns it. Exactly once per job
    (the `done` marker)."""

    KEYS: ClassVar[tuple[str, ...]] = (
        "done", "history", "user_index", "reply", "jobs", "order", "active", "quota",
    )
    done: str
    history: str
    user_index: str
    reply: str
    jobs: str
    order: str
    active: str
    quota: str
    job_id: str
    turn: str
    """A `Turn` as JSON, or ``""`` (an error: nothing stored)."""
    event: str
    """The terminal event (`done` or `error`) as JSON."""
    retention_ms: int
    max_turns: int
    reply_ttl: int
    entry: str
    marker_ttl: int
    replace_last: str
    """``"1"``: the turn replaces the conversation's last one (`/retry`)."""
    conversation: str
    group: str
    tokens: int
    quota_ttl: int


# KEYS[1]: the jobs stream, KEYS[i+1]: job i's order list; ARGV[i]: job i's stream id.
# For each job, 1 if it is first in its conversation's order (or not listed at all: enqueued
# before the list existed, or its list expired), else 0. A first id whose entry has left the
# stream without a commit (unreadable, dead-lettered by hand) is dropped so it cannot block.
FIRST_LUA = """
local jobs = KEYS[1]
local out = {}
for i = 1, #ARGV do
  local order, me, ok = KEYS[i + 1], ARGV[i], 0
  while true do
    local head = redis.call('LINDEX', order, 0)
    if head == false or head == me then ok = 1; break end
    if #redis.call('XRANGE', jobs, head, head) == 0 then
      redis.call('LPOP', order)
    else
      if redis.call('LPOS', order, me) == false then ok = 1 end
      break
    end
  end
  out[i] = ok
end
return out
"""

# A new place in line, only while the job is still waiting (its last event is `queued`):
# atomic, so it can never land after the job's `started`. Returns 1 when it was added.
POSITION_LUA = """
local reply = KEYS[1]
local event, position, queued_type = ARGV[1], ARGV[2], ARGV[3]
local last = redis.call('XREVRANGE', reply, '+', '-', 'COUNT', 1)
if #last == 0 then return 0 end
local ok, prev = pcall(cjson.decode, last[1][2][2])
if not ok or type(prev) ~= 'table' or prev['type'] ~= queued_type then return 0 end
if tonumber(prev['position']) == tonumber(position) then return 0 end
redis.call('XADD', reply, '*', 'e', event)
return 1
"""


@dataclass(frozen=True)
class PositionCall(_Call):
    KEYS: ClassVar[tuple[str, ...]] = ("reply",)
    reply: str
    event: str
    """`QueuedEvent(position=position).dumps()`."""
    position: int
    queued_type: str = QUEUED_TYPE

    @classmethod
    def for_position(cls, reply: str, position: int) -> PositionCall:
        return cls(reply, QueuedEvent(position=position).dumps(), position)
