"""What Redis returns, as text: the one bytes/str decode helper (clients may or may not set
``decode_responses``), and the one identity a process puts on what it owns."""

from __future__ import annotations

import os
import socket
import uuid


def as_str(value: bytes | str | None) -> str:
    """A Redis reply value as `str` (UTF-8); None (a missing key) is ``""``."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def owner_id(sep: str = ":") -> str:
    """This process's identity on what it holds in Redis (reply leases, a worker's consumer
    name): host, pid and a random part, so two processes of one pod never share it."""
    return sep.join((socket.gethostname(), str(os.getpid()), uuid.uuid4().hex[:8]))
