"""The platforms' published write limits as send-budget buckets (`kullm_core.budget`): which
buckets one call counts against, and which a 429 pauses."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kullm_core.budget import Bucket
from kullm_core.settings import SlackSettings, TelegramSettings


@dataclass(frozen=True)
class TelegramScopes:
    """Telegram's published limits: about one send per second into a chat, 20 per minute
    into a group, 30 per second over all chats. Edits and drafts count like messages."""

    chat_interval_s: float = 1.0
    group_limit: int = 20
    group_period_s: float = 60.0
    global_limit: int = 30
    global_period_s: float = 1.0
    global_reserve: int = 6
    """A fifth of the overall budget is kept for new replies and final answers."""

    @classmethod
    def from_settings(cls, s: TelegramSettings) -> TelegramScopes:
        return cls(chat_interval_s=s.min_edit_interval_s,
                   group_limit=s.group_messages_per_minute,
                   global_limit=s.global_messages_per_second,
                   global_reserve=max(1, s.global_messages_per_second // 5))

    def send(self, chat_id: int) -> tuple[Bucket, ...]:
        """The buckets of one send into `chat_id` (groups have negative ids). Groups are
        paced evenly: a burst would spend the minute's budget in seconds."""
        glob = Bucket("all", self.global_limit, self.global_period_s, self.global_reserve)
        if chat_id >= 0:
            return Bucket(f"chat:{chat_id}", 1, self.chat_interval_s), glob
        paced = max(self.chat_interval_s, self.group_period_s / self.group_limit)
        return (Bucket(f"chat:{chat_id}", 1, paced),
                Bucket(f"group:{chat_id}", self.group_limit, self.group_period_s), glob)

    def on_429(self, chat_id: int) -> tuple[Bucket, ...]:
        """A RetryAfter answering a send into `chat_id` pauses that chat (and group)."""
        return tuple(b for b in self.send(chat_id) if b.name != "all")


_SLACK_TIER_PER_MINUTE = {1: 1, 2: 20, 3: 50, 4: 100}
_SLACK_TIERS = {
    "chat.update": 3, "chat.delete": 3, "reactions.add": 3, "reactions.remove": 3,
    "chat.startStream": 4, "chat.appendStream": 4, "chat.stopStream": 4,
    "chat.postEphemeral": 4, "users.info": 4, "conversations.replies": 3,
    "assistant.threads.setStatus": 3,
}
_SLACK_POSTS = ("chat.postMessage", "chat.startStream")
_SLACK_STREAM_EDITS = ("chat.appendStream", "chat.stopStream")


@dataclass(frozen=True)
class SlackScopes:
    """Slack's limits: each Web API method per workspace by its tier, and messages posted
    into a channel about one per second (`chat.postMessage` has no tier of its own).
    `chat.appendStream` and `chat.stopStream` share one bucket (`stream_calls_per_minute`
    counts both)."""

    updates_per_minute: int = 50
    stream_calls_per_minute: int = 100
    posts_per_second_per_channel: float = 1.0
    window_s: float = 60.0
    """Spend per-minute limits in windows this long (stricter, never looser: N per minute
    becomes N // ceil(60 / window_s) per window), so a burst cannot take a minute's budget
    at once and leave every reply frozen for the rest of the minute."""

    @classmethod
    def from_settings(cls, s: SlackSettings) -> SlackScopes:
        return cls(updates_per_minute=s.updates_per_minute,
                   stream_calls_per_minute=s.stream_calls_per_minute,
                   posts_per_second_per_channel=s.posts_per_second_per_channel)

    def _method(self, team: str, method: str) -> Bucket:
        if method == "chat.update":
            per_minute = self.updates_per_minute
        elif method.endswith("Stream"):
            per_minute = self.stream_calls_per_minute
        else:
            per_minute = _SLACK_TIER_PER_MINUTE[_SLACK_TIERS.get(method, 3)]
        if method in _SLACK_STREAM_EDITS:
            method = "chat.stream"
        name = f"m:{team}:{method}"
        per_window = per_minute // math.ceil(60.0 / self.window_s)
        if self.window_s >= 60.0 or per_window < 1:
            return Bucket(name, per_minute, 60.0)
        return Bucket(name, per_window, self.window_s)

    def _post(self, team: str, channel: str) -> Bucket:
        return Bucket(f"post:{team}:{channel}", 1, 1.0 / self.posts_per_second_per_channel)

    def call(self, team: str, method: str, channel: str = "") -> tuple[Bucket, ...]:
        """The buckets of one call of `method` in workspace `team` (into `channel`)."""
        if method == "chat.postMessage":
            return (self._post(team, channel),)
        if method in _SLACK_POSTS and channel:
            return self._method(team, method), self._post(team, channel)
        return (self._method(team, method),)

    def on_429(self, team: str, method: str, channel: str = "") -> tuple[Bucket, ...]:
        """What a 429 paused: the method in the whole workspace; for `chat.postMessage`,
        the channel."""
        if method == "chat.postMessage":
            return (self._post(team, channel),)
        return (self._method(team, method),)
