"""Fixtures of the `kullm eval` tests: the fake judge on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.eval.fake_judge import FakeJudge, serve_fake_judge


@pytest.fixture
async def fake_judge() -> AsyncIterator[FakeJudge]:
    async with serve_fake_judge() as fake:
        yield fake
