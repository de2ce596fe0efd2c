"""A recording chat platform for `kullm_core.replies`: what a user of the chat would see.

`Chat` is the chat itself (messages by id, shared by every replica's sink, like a real chat);
`RecordingSink` shows one reply in it the way an adapter does: one message, posted on the
first thing shown and edited after, its id saved so a resumed reply edits it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kullm_core.helpdesk.actions import Action
from kullm_core.replies import Save
from kullm_core.wire import ReplyRecord


@dataclass
class Chat:
    messages: dict[int, str] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)
    """Every call a sink made, as (kind, text), in order."""
    by_message: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    actions: dict[int, list[str]] = field(default_factory=dict)
    """The buttons under each finished message (action ids)."""
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def record(self, kind: str, text: str, mid: int | None) -> int:
        async with self._changed:
            if mid is None:
                mid = len(self.messages) + 1
            self.messages[mid] = text
            self.seen.append((kind, text))
            self.by_message.setdefault(mid, []).append((kind, text))
            self._changed.notify_all()
        return mid

    async def until(self, pred: Callable[[Chat], bool], timeout: float = 30) -> None:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: pred(self))

        await asyncio.wait_for(_wait(), timeout)

    def kinds(self) -> list[str]:
        return [k for k, _ in self.seen]

    def texts(self, kind: str) -> list[str]:
        return [t for k, t in self.seen if k == kind]


class RecordingSink:
    def __init__(self, chat: Chat, rec: ReplyRecord, save: Save) -> None:
        self.chat = chat
        self.save = save
        self.mid: int | None = rec.shown.get("message")

    async def _show(self, kind: str, text: str) -> None:
        new = self.mid is None
        self.mid = await self.chat.record(kind, text, self.mid)
        if new:
            await self.save()

    async def waiting(self, position: int, *, behind: bool = False) -> None:
        await self._show("waiting", "behind" if behind else f"#{position}")

    async def warming(self) -> None:
        await self._show("warming", "")

    async def progress(self, text: str) -> None:
        await self._show("progress", text)

    async def finish(self, text: str, note: str, actions: Sequence[Action] = ()) -> bool:
        await self._show("finish", f"{text}{note}")
        if self.mid is not None:
            self.chat.actions[self.mid] = [a.id for a in actions]
        return True

    async def fail(self, text: str, message: str) -> None:
        await self._show("fail", f"{text}|{message}")

    async def notice(self, text: str) -> None:
        await self._show("notice", text)

    def state(self) -> dict[str, Any]:
        return {"message": self.mid}

    async def close(self) -> None:
        return None


@dataclass
class RecordingPlatform:
    chat: Chat
    namespace: str = "test"

    def sink(self, record: ReplyRecord, save: Save) -> RecordingSink:
        return RecordingSink(self.chat, record, save)
