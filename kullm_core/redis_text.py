"""What Redis returns, as text: the one bytes/str decode helper (clients may or may not set
``decode_responses``); the one identity a process puts on what it owns in Redis, and the one
owner-checked release of it."""

from __future__ import annotations

import os
import socket
import uuid

from redis.asyncio import Redis


def as_str(value: bytes | str | None) -> str:
    """A Redis reply value as `str` (UTF-8); None (a missing key) is ``""``."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def owner_id() -> str:
    """This process's identity on what it holds in Redis (reply leases, a worker's consumer
    name, the warming flag): host, pid and a random part, so two processes of one pod never
    share it."""
    return ":".join((socket.gethostname(), str(os.getpid()), uuid.uuid4().hex[:8]))


# KEYS: keys holding an owner id; ARGV[1]: the owner. Deletes the keys it still holds.
RELEASE_OWNED_LUA = """
local owner = ARGV[1]
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == owner then redis.call('DEL', key) end
end
return 1
"""


async def release_owned(redis: Redis, keys: list[str], owner: str) -> None:
    """Delete each key only while it still names `owner`: a lock or lease another process
    took over after ours lapsed is left alone."""
    if keys:
        await redis.eval(RELEASE_OWNED_LUA, len(keys), *keys, owner)
