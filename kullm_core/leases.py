"""Owner-checked leases in Redis, for adapters that deliver replies across replicas.

A lease key holds its owner's id; only the owner renews or releases it, so a replica that
paused (GC, network) cannot cut short a lease another replica took over.
"""

from __future__ import annotations

# KEYS: lease keys; ARGV[1]: owner, ARGV[2]: lease in ms. Returns how many were renewed.
RENEW_OWNED_LUA = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    n = n + 1
  end
end
return n
"""

# KEYS: lease keys; ARGV[1]: owner. Deletes the keys this owner still holds.
RELEASE_OWNED_LUA = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 1
"""
