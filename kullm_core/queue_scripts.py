"""The job queue's Lua scripts (each runs atomically in Redis). Used by `kullm_core.queue`.

Key and argument layouts are documented above each script; `queue.py` is the only caller.
"""

# KEYS: dedupe, jobs stream, reply stream, conversation order list.
# ARGV: job id, job JSON, dedupe TTL, max pending, group, reply TTL, order TTL.
# Returns {1, entry id, position} | {0, existing job id, 0} (duplicate) | {-1, '', waiting}.
ENQUEUE_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[3]) == false then
  return {0, redis.call('GET', KEYS[1]) or '', 0}
end
local n = redis.call('XLEN', KEYS[2])
local inflight = redis.call('XPENDING', KEYS[2], ARGV[5])[1]
if n >= tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[1])
  return {-1, '', n - inflight}
end
local id = redis.call('XADD', KEYS[2], '*', 'id', ARGV[1], 'job', ARGV[2])
redis.call('RPUSH', KEYS[4], id)
redis.call('EXPIRE', KEYS[4], ARGV[7])
local position = n - inflight + 1
redis.call('XADD', KEYS[3], '*', 'e', '{"v":1,"type":"queued","position":' .. position .. '}')
redis.call('EXPIRE', KEYS[3], ARGV[6])
return {1, id, position}
"""

# KEYS: done marker, history, user index, reply stream, jobs stream, order list, active, quota.
# ARGV: job id, turn JSON or '', terminal event JSON, retention ms, max turns, reply TTL,
# entry id, marker TTL, replace-last flag, conversation key, group, tokens.
# Returns 1 when this call answered the job, 0 when it was already answered.
COMMIT_LUA = """
local jobs, entry = KEYS[5], ARGV[7]
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[8]) == false then
  redis.call('XACK', jobs, ARGV[11], entry)
  redis.call('XDEL', jobs, entry)
  redis.call('LREM', KEYS[6], 0, entry)
  return 0
end
if ARGV[2] ~= '' then
  if ARGV[9] == '1' then redis.call('RPOP', KEYS[2]) end
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  redis.call('SADD', KEYS[3], ARGV[10])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
if tonumber(ARGV[12]) > 0 then
  redis.call('INCRBY', KEYS[8], ARGV[12])
  redis.call('EXPIRE', KEYS[8], 172800)
end
redis.call('XADD', KEYS[4], '*', 'e', ARGV[3])
redis.call('EXPIRE', KEYS[4], ARGV[6])
redis.call('XACK', jobs, ARGV[11], entry)
redis.call('XDEL', jobs, entry)
redis.call('LREM', KEYS[6], 0, entry)
if redis.call('GET', KEYS[7]) == ARGV[1] then redis.call('DEL', KEYS[7]) end
return 1
"""

# KEYS[1]: the jobs stream, KEYS[i+1]: job i's order list; ARGV[i]: job i's stream id.
# For each job, 1 if it is first in its conversation's order (or not listed at all: enqueued
# before the list existed, or its list expired), else 0. A first id whose entry has left the
# stream without a commit (unreadable, dead-lettered by hand) is dropped so it cannot block.
FIRST_LUA = """
local out = {}
for i = 1, #ARGV do
  local order, me, ok = KEYS[i + 1], ARGV[i], 0
  while true do
    local head = redis.call('LINDEX', order, 0)
    if head == false or head == me then ok = 1; break end
    if #redis.call('XRANGE', KEYS[1], head, head) == 0 then
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
# atomic, so it can never land after the job's `started`.
POSITION_LUA = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return 0 end
local fields = last[1][2]
local raw = fields[2]
if not string.find(raw, '"type":"queued"', 1, true) then return 0 end
if string.find(raw, '"position":' .. ARGV[1] .. '}', 1, true) then return 0 end
redis.call('XADD', KEYS[1], '*', 'e', '{"v":1,"type":"queued","position":' .. ARGV[1] .. '}')
return 1
"""
