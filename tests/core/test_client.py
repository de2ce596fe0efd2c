"""`CoreClient.submit` through the real worker: what reaches the model and the history."""

from __future__ import annotations

from typing import Any

from kullm_core.client import CoreClient, trim
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.wire import ConversationRef, UserRef
from tests.core.helpers import collect

PASTE = "\n  \n    def f():\n\treturn 1\n\n"


def test_trim_keeps_the_first_lines_indentation() -> None:
    assert trim(PASTE) == "    def f():\n\treturn 1"
    assert trim(" \n\t ") == "" and trim("  hi  ") == "  hi"


async def test_a_pasted_code_block_keeps_its_indentation(
    client: CoreClient, make_worker: Any
) -> None:
    engine = ScriptedEngine(lambda _r: "네.", delay_s=0.0)
    conv = ConversationRef(platform="test", chat="c7", user="u7")
    async with make_worker(engine=engine):
        sub = await client.submit(conv, UserRef(platform="test", id="u7"), PASTE, "paste-1")
        await collect(client, sub.job_id)
    [turn] = await client.history(conv)
    assert turn.user == "    def f():\n\treturn 1"
    assert engine.requests[0].messages[-1]["content"].endswith("    def f():\n\treturn 1")
