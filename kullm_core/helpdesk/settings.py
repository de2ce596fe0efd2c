"""`[helpdesk]` settings: what the bot offers under its answers and how each channel behaves."""

from __future__ import annotations

from pydantic import Field

from kullm_core.settings_base import Section
from kullm_core.wire import ChannelConfig, ChannelMode


class HelpdeskSettings(Section):
    feedback: bool = True
    """👍 / 👎 buttons under every finished answer."""
    escalation: bool = True
    """The "Ask a person" button and `/human` (`/kullm human`)."""
    default_mode: ChannelMode = "mention"
    """Channels and groups not listed in `channels` (DMs are always answered)."""
    responders: list[str] = Field(default_factory=list)
    """Responders of channels that name none: platform user ids or a Slack user group."""
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    """Per channel, by qualified id (`slack:T1:C1`, `tg:-100123`). An admin's command
    (`/kullm mode ...`) overrides this in Redis for every replica."""
