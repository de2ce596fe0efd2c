"""Every object stored in Redis: typed, versioned JSON (never pickle).

Jobs travel on the jobs stream (field ``job``), reply events on one stream per job (field
``e``), history turns are list elements. Each carries ``v`` so readers can refuse or migrate
formats they do not know.
"""

from __future__ import annotations

import hashlib
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

WIRE_VERSION = 1


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def dumps(self) -> str:
        return self.model_dump_json()


class ConversationRef(_Wire):
    """Where a conversation lives. `key` is its stable identity in the store.

    Scope rules are the adapter's: e.g. a Telegram group per user sets `user`, a Slack thread
    sets `thread` and leaves `user` empty so everyone in the thread shares it.
    """

    platform: str = Field(pattern=r"^[a-z0-9_-]{1,16}$")
    workspace: str = ""
    chat: str
    thread: str = ""
    user: str = ""
    direct: bool = False
    """A one-to-one chat with the bot (a DM). Not part of `key`."""

    @property
    def key(self) -> str:
        return ":".join(
            part.replace(":", "_")
            for part in (self.platform, self.workspace, self.chat, self.thread, self.user)
        )


class UserRef(_Wire):
    platform: str
    id: str
    name: str = ""
    lang: str = "ko"


class Quoted(_Wire):
    """A message of someone else that gives a question its context (a Slack thread's
    earlier human messages, the Telegram message a question replies to)."""

    user_id: str
    name: str = ""
    text: str
    at: float = 0.0
    """When it was written (orders it among the conversation's turns)."""


class Job(_Wire):
    """One user message to answer."""

    v: Literal[1] = 1
    id: str
    source_id: str
    """The platform's message id, the dedupe key (e.g. ``tg:<chat>:<message_id>``)."""
    conversation: ConversationRef
    user: UserRef
    text: str
    created_at: float = Field(default_factory=time.time)
    replace_last: bool = False
    """Regenerate: the answer replaces the conversation's last turn (`/retry`)."""
    meta: dict[str, str] = Field(default_factory=dict)
    """Opaque routing data for the adapter that delivers the reply (chat ids, thread ts...)."""
    context: list[Quoted] = Field(default_factory=list)
    """Messages of others quoted into the prompt (see `Quoted`); not stored in history."""
    max_tokens: int = 0
    """Tokens the asker's daily quota reserved for this answer: it is generated with at most
    that many (0: no quota applies)."""

    @staticmethod
    def id_for(source_id: str) -> str:
        return hashlib.sha256(source_id.encode("utf-8")).hexdigest()[:24]


class Turn(_Wire):
    """One exchange in a conversation's history: written once, user and assistant together."""

    v: Literal[1] = 1
    job_id: str
    user_id: str
    user_name: str = ""
    user: str
    assistant: str
    finish_reason: str = "stop"
    at: float = Field(default_factory=time.time)


class Timings(_Wire):
    queue_ms: float = 0.0
    first_token_ms: float = 0.0
    total_ms: float = 0.0


class QueuedEvent(_Wire):
    v: Literal[1] = 1
    type: Literal["queued"] = "queued"
    position: int
    """Jobs ahead of this one that no worker has taken yet, plus one."""


class StartedEvent(_Wire):
    v: Literal[1] = 1
    type: Literal["started"] = "started"
    attempt: int = 1
    """A job taken over after a worker died starts again with a higher attempt: readers drop
    the text they collected for earlier attempts."""
    worker: str = ""
    prompt_tokens: int = 0
    dropped_turns: int = 0


class DeltaEvent(_Wire):
    v: Literal[1] = 1
    type: Literal["delta"] = "delta"
    text: str
    attempt: int = 1


FinishReason = Literal["stop", "length", "cancelled", "timeout", "stop_string"]


class DoneEvent(_Wire):
    v: Literal[1] = 1
    type: Literal["done"] = "done"
    text: str
    """The whole reply, as stored in history. Authoritative over the deltas."""
    finish_reason: FinishReason = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    timings: Timings = Timings()
    attempt: int = 1


ErrorKind = Literal[
    "busy", "too_long", "failed", "timeout", "internal", "bad_input", "rate_limited", "quota",
    "forbidden",
]


class ErrorEvent(_Wire):
    v: Literal[1] = 1
    type: Literal["error"] = "error"
    kind: ErrorKind
    params: dict[str, int | str] = Field(default_factory=dict)
    """Values for the localized message (e.g. ``position``, ``limit``)."""


Event = Annotated[
    QueuedEvent | StartedEvent | DeltaEvent | DoneEvent | ErrorEvent,
    Field(discriminator="type"),
]
_EVENT = TypeAdapter(Event)
TERMINAL = ("done", "error")


class ReplyRequest(_Wire):
    """A question not yet accepted by the queue, kept so that a restarted adapter submits it."""

    kind: Literal["ask", "retry"] = "ask"
    text: str = ""
    meta: dict[str, str] = Field(default_factory=dict)
    context: list[Quoted] = Field(default_factory=list)


class ReplyRecord(_Wire):
    """One reply on its way to a chat: what a restarted adapter needs to finish delivering it.

    `target` (where the reply goes: chat, thread, message answered) and `shown` (the
    platform's messages showing it so far) are owned by the platform's sink and opaque here.
    """

    v: Literal[1] = 1
    job_id: str
    source_id: str
    conversation: ConversationRef
    user: UserRef
    target: dict[str, Any] = Field(default_factory=dict)
    shown: dict[str, Any] = Field(default_factory=dict)
    state: Literal["submitting", "following"] = "submitting"
    """submitting: `request` still has to be accepted by the queue; following: the job's reply
    events are being shown."""
    request: ReplyRequest | None = None
    attempt: int = 0
    """The job attempt last shown (a worker that died restarts the job with a higher one)."""
    last_id: str = "0-0"
    """The reply stream entry last shown. A resumed reply reads its stream from the start
    anyway: the text is rebuilt from every delta; this only tells how far the user had got."""
    busy_since: float = 0.0
    """When the queue first answered busy (0: it did not); bounds the retries."""
    created_at: float = Field(default_factory=time.time)

    @classmethod
    def ask(cls, conv: ConversationRef, user: UserRef, source_id: str, text: str,
            target: dict[str, Any], *, kind: Literal["ask", "retry"] = "ask",
            meta: dict[str, str] | None = None,
            context: list[Quoted] | None = None) -> ReplyRecord:
        """A new reply to a user's message (`kind="retry"`: regenerate the last answer)."""
        return cls(job_id=Job.id_for(source_id), source_id=source_id, conversation=conv,
                   user=user, target=target,
                   request=ReplyRequest(kind=kind, text=text, meta=meta or {},
                                        context=context or []))


def parse_reply_record(raw: str | bytes) -> ReplyRecord:
    return ReplyRecord.model_validate_json(raw)


def parse_event(raw: str | bytes) -> Event:
    return _EVENT.validate_json(raw)


def parse_job(raw: str | bytes) -> Job:
    return Job.model_validate_json(raw)


def parse_turn(raw: str | bytes) -> Turn:
    return Turn.model_validate_json(raw)


# -- the team helpdesk (`kullm_core.helpdesk`) ----------------------------------------------

ReplyOutcome = Literal["answered", "stopped", "failed", "refused"]
"""How a question ended for its asker: answered (in full or cut at the length limit), stopped
(/stop), failed (an error or timeout), refused (rate limit, quota, a full queue)."""


class Exchange(_Wire):
    """A finished reply as the helpdesk sees it: who asked where, how it ended, how fast.
    No text: the question and answer stay in the history (`Turn`, by `job_id`)."""

    v: Literal[1] = 1
    job_id: str
    conversation: ConversationRef
    user: UserRef
    asker: str
    """The asker's qualified id (`tg:1`, `slack:T1:U1`)."""
    channel: str
    """The qualified chat (`tg:-100123`, `slack:T1:C1`): the unit of per-channel stats."""
    outcome: ReplyOutcome
    finish_reason: str = ""
    asked_at: float
    finished_at: float
    first_visible_s: float = -1.0
    """Seconds from the question to the first text the user saw (-1: none shown)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0


Rating = Literal["up", "down"]


class Feedback(_Wire):
    """One person's rating of one answer (the latest wins) and their optional comment."""

    v: Literal[1] = 1
    job_id: str
    rater: str
    """Qualified id of the person rating."""
    rating: Rating
    comment: str = ""
    at: float = Field(default_factory=time.time)


class Escalation(_Wire):
    """A conversation handed to a person ("Ask a person")."""

    v: Literal[1] = 1
    id: str
    """`Escalation.id_for(conversation)`: short, fits a Telegram button."""
    conversation: ConversationRef
    channel: str
    asker: str
    asker_name: str = ""
    question: str = ""
    job_id: str = ""
    """The answer the asker was not happy with ('' when escalated by command)."""
    link: str = ""
    state: Literal["open", "resolved"] = "open"
    opened_at: float = Field(default_factory=time.time)
    first_human_at: float = 0.0
    """When someone other than the asker and the bot first wrote in the conversation."""
    resolved_at: float = 0.0
    resolver: str = ""
    shown: dict[str, Any] = Field(default_factory=dict)
    """Where the hand-off message is (chat, message id, language): owned by the platform's
    `HandoffView`, opaque here."""

    @staticmethod
    def id_for(conversation: ConversationRef) -> str:
        return hashlib.sha256(conversation.key.encode("utf-8")).hexdigest()[:16]


ChannelMode = Literal["all", "mention", "off"]


class ChannelConfig(_Wire):
    """How the bot behaves in one channel or group: set in `helpdesk.channels`, changed by
    admins with a command (stored in Redis, read by every replica)."""

    v: Literal[1] = 1
    mode: ChannelMode = "mention"
    """all: every top-level message is a question (answered in its thread); mention: only
    when mentioned (or in a DM); off: never."""
    questions_only: bool = False
    """Answer only messages that look like questions (mode `all`)."""
    responders: list[str] = Field(default_factory=list)
    """Who is tagged on escalation and may resolve: platform user ids (Slack `U…`, Telegram
    numeric ids) or a Slack user group (`S…`)."""
    answer_when_escalated: bool = False
    """Keep answering in a conversation handed to a person."""
    handoff_chat: str = ""
    """Where hand-offs go instead of the conversation itself ('' = there): a Telegram
    helpdesk group, or a Slack channel for hand-offs from DMs (`slack:T1:dm`)."""
    handoff_thread: str = ""
    """Telegram: the forum topic in `handoff_chat` ('' = none)."""
