"""The helpdesk's Lua scripts: each keeps a record and the statistics that count it in one
atomic step, so a reply delivered twice (an adapter resumed it) or a rating pressed twice is
counted once. The records themselves are written by Python (`kullm_core.wire`); the scripts
only store them and read the one field they need with `cjson`."""

# KEYS: exchange, stats hash, ttfv list, users HLL, asker's helpdesk index.
# ARGV: Exchange JSON, retention ms, channel, outcome, prompt tokens, completion tokens,
#       first visible s ('' = none), asker, stats TTL s, samples cap.
# Returns 1 when recorded, 0 when this reply was recorded already.
RECORD_EXCHANGE_LUA = """
local exch, stats, ttfv, users, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local record, retention, channel, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local prompt, completion, first, asker = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local stats_ttl, cap = ARGV[9], tonumber(ARGV[10])
if redis.call('SET', exch, record, 'NX', 'PX', retention) == false then return 0 end
redis.call('SADD', index, exch)
redis.call('PEXPIRE', index, retention)
redis.call('HINCRBY', stats, channel .. '|questions', 1)
redis.call('HINCRBY', stats, channel .. '|' .. outcome, 1)
redis.call('HINCRBY', stats, channel .. '|prompt_tokens', prompt)
redis.call('HINCRBY', stats, channel .. '|completion_tokens', completion)
redis.call('EXPIRE', stats, stats_ttl)
if first ~= '' then
  redis.call('RPUSH', ttfv, first)
  redis.call('LTRIM', ttfv, -cap, -1)
  redis.call('EXPIRE', ttfv, stats_ttl)
end
redis.call('PFADD', users, asker)
redis.call('EXPIRE', users, stats_ttl)
return 1
"""

# KEYS: exchange, feedback hash, stats hash, rater's helpdesk index.
# ARGV: rater, Feedback JSON, rating, channel, retention ms, stats TTL s.
# Returns the rating replaced ('' for a first rating), or false when the exchange is gone
# (forgotten or expired).
RATE_LUA = """
local exch, fb, stats, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rater, record, rating, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', exch) == 0 then return false end
local old = redis.call('HGET', fb, rater)
local before = ''
if old then before = cjson.decode(old)['rating'] end
redis.call('HSET', fb, rater, record)
redis.call('PEXPIRE', fb, ARGV[5])
redis.call('SADD', index, fb)
redis.call('PEXPIRE', index, ARGV[5])
if before ~= rating then
  if before ~= '' then redis.call('HINCRBY', stats, channel .. '|' .. before, -1) end
  redis.call('HINCRBY', stats, channel .. '|' .. rating, 1)
  redis.call('EXPIRE', stats, ARGV[6])
end
return before
"""
