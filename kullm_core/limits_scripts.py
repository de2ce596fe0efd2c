"""The admission script of `kullm_core.limits.Limiter`: the request-rate moving window and the
daily token quota decided together, atomically.

Why not the `limits` library's moving window: a request must be refused by the quota without
spending a place in the minute, and admitted requests must reserve tokens, both in one atomic
step, which two separate calls (a `limits` hit, then a reservation) cannot give. The window
is the same idea as `limits`' Redis moving window (one timestamp per request, the oldest
dropped as they leave the window), kept in a sorted set beside the quota keys.
"""

# KEYS: request window (zset), tokens used today, reservations today (hash job -> "n:at ms"),
#       the user's own daily limit (an admin's setting; absent = ARGV default).
# ARGV: now ms, window ms, requests per window (0 = none), default daily limit (0 = none),
#       tokens wanted, job id, done-marker key prefix, reservation max age ms, quota TTL s.
# Returns {0, tokens granted (0 = no quota)} | {1, limit} (quota) | {2, retry after s} (rate).
ADMIT_LUA = """
local window, used_key, reserved_key, own_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, span, per_window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local limit = tonumber(redis.call('GET', own_key) or ARGV[4])
local wanted, job, done_prefix = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local max_age, ttl = tonumber(ARGV[8]), ARGV[9]
local granted = 0
if limit > 0 then
  local left = limit - tonumber(redis.call('GET', used_key) or '0')
  local held = redis.call('HGETALL', reserved_key)
  for i = 1, #held, 2 do
    local n, at = string.match(held[i + 1], '^(%d+):(%d+)$')
    if redis.call('EXISTS', done_prefix .. held[i]) == 1 or held[i] == job
        or n == nil or now - tonumber(at) > max_age then
      redis.call('HDEL', reserved_key, held[i])
    else
      left = left - tonumber(n)
    end
  end
  if left <= 0 then return {1, limit} end
  granted = math.min(wanted, left)
end
if per_window > 0 then
  redis.call('ZREMRANGEBYSCORE', window, '-inf', now - span)
  if redis.call('ZCARD', window) >= per_window then
    local oldest = redis.call('ZRANGE', window, 0, 0, 'WITHSCORES')
    return {2, math.max(1, math.ceil((tonumber(oldest[2]) + span - now) / 1000))}
  end
  redis.call('ZADD', window, now, job)
  redis.call('PEXPIRE', window, span)
end
if granted > 0 then
  redis.call('HSET', reserved_key, job, granted .. ':' .. now)
  redis.call('EXPIRE', reserved_key, ttl)
end
return {0, granted}
"""
