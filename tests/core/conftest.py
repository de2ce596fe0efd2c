"""Fixtures of the core tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.core.valkey_proc import ValkeyProc


@pytest.fixture
def valkey() -> Iterator[ValkeyProc]:
    server = ValkeyProc()
    server.start()
    yield server
    if server.proc is not None:
        server.proc.kill()


