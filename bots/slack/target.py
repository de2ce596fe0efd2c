"""Where a reply goes in Slack; stored in `Job.meta` and the in-flight registry."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kullm_core.wire import ConversationRef


@dataclass(frozen=True)
class Target:
    team: str
    channel: str
    thread_ts: str
    """The thread the reply goes into; '' for a top-level DM answer."""
    user: str
    """Who asked (the recipient of a native stream)."""
    source_ts: str
    """The asking message."""
    lang: str = "ko"
    assistant: bool = False
    """An AI-app (assistant) thread: status via assistant.threads.setStatus."""

    @property
    def is_dm(self) -> bool:
        return self.channel.startswith("D")

    def meta(self) -> dict[str, str]:
        return {f"slack_{k}": ("1" if v is True else "" if v is False else str(v))
                for k, v in asdict(self).items()}

    @classmethod
    def from_meta(cls, meta: dict[str, str]) -> Target:
        return cls(
            team=meta.get("slack_team", ""),
            channel=meta["slack_channel"],
            thread_ts=meta.get("slack_thread_ts", ""),
            user=meta.get("slack_user", ""),
            source_ts=meta.get("slack_source_ts", ""),
            lang=meta.get("slack_lang", "ko") or "ko",
            assistant=meta.get("slack_assistant") == "1",
        )


def conversation(team: str, channel: str, thread: str) -> ConversationRef:
    """A Slack conversation: a thread (shared by everyone in it) or a DM's top level. A DM
    (`D…`) is `direct`: the helpdesk counts all DMs as one place (a DM's id names a user)."""
    return ConversationRef(platform="slack", workspace=team, chat=channel, thread=thread,
                           direct=channel.startswith("D"))


def source_id(team: str, channel: str, ts: str) -> str:
    """The dedupe key of a Slack message (stable across event retries and event types)."""
    return f"slack:{team}:{channel}:{ts}"
