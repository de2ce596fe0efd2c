"""One fold of a job's reply events into what the user should see.

Pure (no I/O): `Deliveries` drives a platform sink with it, the terminal chat prints it, tests
compare against it. Rules every surface shares:

- `queued` moves the place in line while no answer has started;
- `started` with a new attempt (a worker died and another took the job over) drops the text
  of the earlier attempt; deltas of an older attempt are ignored;
- `done` carries the whole reply (authoritative over the deltas) and a finish note when it did
  not end normally (stopped, cut at the length limit, timed out);
- `error` keeps the partial text and adds the localized error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kullm_core.texts import error_text, finish_note
from kullm_core.wire import ErrorEvent, Event

Phase = Literal["waiting", "streaming", "done", "failed"]
Change = Literal["position", "started", "reset", "text", "done", "error"]


@dataclass
class ReplyFold:
    """What a reply shows after the events applied so far (`apply` each one in order)."""

    lang: str = "ko"
    phase: Phase = "waiting"
    position: int = 0
    """Place in line (1 = next); 0 when unknown or once started."""
    attempt: int = 0
    text: str = ""
    note: str = ""
    """The finish note (done) or the error message (failed); '' otherwise."""
    finish_reason: str = ""
    error: ErrorEvent | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_id: str = "0-0"

    @property
    def over(self) -> bool:
        return self.phase in ("done", "failed")

    def apply(self, event: Event, entry_id: str = "") -> Change | None:
        """Apply one event; returns what changed for the user (None: nothing)."""
        if entry_id:
            self.last_id = entry_id
        if self.over:
            return None
        if event.type == "queued":
            if self.phase != "waiting" or event.position == self.position:
                return None
            self.position = event.position
            return "position"
        if event.type == "started":
            return self._start(event.attempt)
        if event.type == "delta":
            if event.attempt < self.attempt:
                return None
            change = self._start(event.attempt)
            self.text += event.text
            return "text" if event.text or change is None else change
        if event.type == "done":
            self.phase, self.text = "done", event.text
            self.finish_reason = event.finish_reason
            self.prompt_tokens = event.prompt_tokens
            self.completion_tokens = event.completion_tokens
            self.note = finish_note(event.finish_reason, self.lang)
            return "done"
        self.phase, self.error = "failed", event
        self.note = error_text(event, self.lang)
        return "error"

    def _start(self, attempt: int) -> Change | None:
        if attempt == self.attempt and self.phase == "streaming":
            return None
        reset = bool(self.text) and attempt != self.attempt
        if attempt != self.attempt:
            self.text = ""
        self.attempt, self.phase, self.position = attempt, "streaming", 0
        return "reset" if reset else "started"


def fold(events: list[Event], lang: str = "ko") -> ReplyFold:
    """The state after all `events` (tests, the terminal chat)."""
    f = ReplyFold(lang)
    for event in events:
        f.apply(event)
    return f
