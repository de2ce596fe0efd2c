"""The queue's Lua scripts name their KEYS and ARGV in the order their typed calls list them,
and the events they write are `kullm_core.wire`'s."""

from __future__ import annotations

import dataclasses
import re

import pytest

from kullm_core.queue.scripts import (
    COMMIT_LUA,
    ENQUEUE_LUA,
    POSITION_LUA,
    CommitCall,
    EnqueueCall,
    PositionCall,
)
from kullm_core.wire import QueuedEvent, parse_event

_LOCAL = re.compile(r"^local ([\w, ]+) = ((?:(?:KEYS|ARGV)\[\d+\](?:, )?)+)$", re.M)


def _named(lua: str, table: str) -> list[str]:
    """Names the script's first lines give KEYS[i] / ARGV[i], by index."""
    names: dict[int, str] = {}
    for left, right in _LOCAL.findall(lua):
        for name, ref in zip(left.split(", "), right.split(", "), strict=True):
            if ref.startswith(table):
                names[int(ref[len(table) + 1:-1])] = name
    return [names[i] for i in sorted(names)]


@pytest.mark.parametrize(("lua", "call"), [(ENQUEUE_LUA, EnqueueCall), (COMMIT_LUA, CommitCall),
                                           (POSITION_LUA, PositionCall)])
def test_each_script_reads_the_values_its_call_passes_in_order(lua: str, call: type) -> None:
    fields = [f.name for f in dataclasses.fields(call)]
    assert _named(lua, "KEYS") == list(call.KEYS)
    assert _named(lua, "ARGV") == [f for f in fields if f not in call.KEYS]
    body = _LOCAL.sub("", lua)
    assert "KEYS[" not in body and "ARGV[" not in body


def test_the_events_scripts_write_are_wire_events() -> None:
    call = EnqueueCall("d", "j", "r", "o", "id", "{}", 1, 1, "g", 1, 1)
    assert parse_event(f"{call.queued_prefix}7{call.queued_suffix}") == QueuedEvent(position=7)
    assert parse_event(PositionCall.for_position("r", 3).event) == QueuedEvent(position=3)
    for lua in (ENQUEUE_LUA, COMMIT_LUA, POSITION_LUA):
        assert '"type"' not in lua and "queued" not in lua.replace("queued_", "")
