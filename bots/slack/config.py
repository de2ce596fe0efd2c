"""Slack adapter knobs: the documented ones come from `settings.slack` (`[slack]` in
config/kullm.toml), the finer ones keep safe defaults. `run_slack` takes an optional
`SlackTuning` so tests and benchmarks can shorten timings.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kullm_core.settings import Settings


class SlackTuning(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_message_chars: int = Field(default=3800, ge=200, le=12000)
    """One Slack message holds at most this much reply text; longer replies continue in further
    thread messages. Under the 12,000-character markdown limit and Slack's 4,000-character
    readability advice."""
    min_message_chars: int = Field(default=400, ge=50)
    """Lower bound when Slack refuses a message as too long and the adapter shrinks it."""
    updates_per_minute: int | None = None
    """`chat.update` per workspace (Tier 3). None: `settings.slack.updates_per_minute`."""
    posts_per_second_per_channel: float | None = None
    """`chat.postMessage`/`chat.startStream` per channel. None: the settings value."""
    stream_calls_per_minute: int = Field(default=100, ge=1)
    """`chat.appendStream`/`chat.stopStream` per workspace (Tier 4)."""
    budget_window_s: float = Field(default=10.0, gt=0, le=60)
    """Per-minute limits are spent in windows this long (50 per minute: 8 per 10 s), so a
    burst of replies cannot spend the minute's budget in its first second and leave every
    reply frozen for the rest of it. The other methods keep Slack's tiers (`SlackScopes`)."""
    markdown_blocks: bool = True
    """Render replies as a `markdown` block (Slack renders the model's Markdown itself).
    False, or a workspace refusing the block: Slack mrkdwn text instead."""
    native_disable_s: float = Field(default=600.0, ge=0)
    """After a workspace refuses `chat.startStream`, use post + update there for this long."""
    max_429_retries: int = Field(default=2, ge=0, le=10)
    """Retries inside slack-sdk's rate-limit handler before the scheduler takes over."""
    max_failures: int = Field(default=6, ge=1)
    """Consecutive transient failures (5xx, network) before a reply is given up."""
    api_timeout_s: float = Field(default=15.0, gt=0)
    http_host: str = "0.0.0.0"
    http_path: str = "/slack/events"
    socket_ping_interval_s: float = Field(default=10.0, gt=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """On stop: time given to replies in flight to finish before they are handed over (the next
    adapter start resumes them from the reply streams)."""
    lease_s: float = Field(default=15.0, gt=0)
    """An adapter holds each reply it delivers under a lease renewed every lease_s / 3; replies
    whose lease lapsed (a crashed replica) are taken over."""
    locale_ttl_s: int = Field(default=86400, ge=60)
    suggested_prompts: bool = True
    """Offer suggested prompts when an assistant thread opens."""

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SlackTuning:
        """The documented settings (`[slack]`) with finer knobs at their defaults."""
        s = settings.slack
        base: dict[str, Any] = {
            "max_message_chars": s.max_message_chars,
            "stream_calls_per_minute": s.stream_calls_per_minute,
            "markdown_blocks": s.markdown_blocks, "http_path": s.http_path,
            "shutdown_grace_s": s.shutdown_grace_s, "lease_s": s.lease_s,
        }
        return cls(**(base | overrides))

    def update_limit(self, settings: Settings) -> int:
        return self.updates_per_minute or settings.slack.updates_per_minute

    def post_rate(self, settings: Settings) -> float:
        return self.posts_per_second_per_channel or settings.slack.posts_per_second_per_channel
