"""The seam between the reply lifecycle (`Deliveries`) and a chat platform.

A platform implements `ChatPlatform.sink`, returning a `ReplySink` for one reply. The sink owns
how the reply looks (messages, drafts, native streams, rendering, its send budget); the core
owns when each call is made. A sink calls `save()` after it created something a restarted
adapter must find again (a message id): the core then stores `state()` in the reply record,
and hands that state back to `ChatPlatform.sink` when the reply is resumed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from kullm_core.helpdesk.actions import Action
from kullm_core.wire import ReplyRecord

Save = Callable[[], Awaitable[None]]


class ReplySink(Protocol):
    """One reply as the platform shows it. Calls never overlap and come in this order:
    any of `waiting`/`warming`/`progress`, then exactly one of `finish`/`fail`/`notice`."""

    async def waiting(self, position: int, *, behind: bool = False) -> None:
        """The question waits: `position` in line (1 = next), or `behind` another reply of
        the same conversation. Called again when the place changes."""

    async def warming(self) -> None:
        """The question waits for a worker that is still loading its model."""

    async def progress(self, text: str) -> None:
        """The reply so far (the whole text, not a delta). Called at most once per tick; a
        sink that paces its own sends may return at once and send the latest text later."""

    async def finish(self, text: str, note: str, actions: Sequence[Action] = ()) -> bool:
        """The final reply and its finish note ('' = ended normally; `text` may be empty),
        with the helpdesk's buttons to attach to its last message part (rate, ask a
        person). Returns whether the user can see it."""

    async def fail(self, text: str, message: str) -> None:
        """The reply broke off: the text written so far (may be '') and why."""

    async def notice(self, text: str) -> None:
        """A one-message answer instead of a reply (refused, busy for too long, nothing to
        regenerate)."""

    def state(self) -> dict[str, Any]:
        """What shows the reply so far (message ids...), stored as `ReplyRecord.shown`."""

    async def close(self) -> None:
        """The reply is over or handed back: stop typing indicators, drop pending sends."""


class ChatPlatform(Protocol):
    """What `Deliveries` needs from a platform adapter."""

    namespace: str
    """Its keys' namespace (`tg`, `slack`)."""

    def sink(self, record: ReplyRecord, save: Save) -> ReplySink:
        """A sink for `record`; `record.shown` is what a previous owner showed ({} if new)."""
