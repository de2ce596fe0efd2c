"""KULLM3 in Slack: channels (thread = conversation), DMs, the assistant surface, `/kullm`.

Entry point: `run_slack(settings, client, stop)`. See deploy/slack/README.md for setup.
"""

from __future__ import annotations

import asyncio

from bots.slack.app import SlackBot
from bots.slack.config import SlackTuning
from kullm_core.client import CoreClient
from kullm_core.ops import READINESS
from kullm_core.settings import Settings

__all__ = ["SlackBot", "SlackTuning", "run_slack"]


async def run_slack(
    settings: Settings, client: CoreClient, stop: asyncio.Event,
    *, tuning: SlackTuning | None = None,
) -> None:
    """Serve Slack (Socket Mode, or HTTP Events per `settings.slack.mode`) until `stop` is set.

    Replies still streaming at stop get `tuning.shutdown_grace_s` to finish; the rest are
    resumed from their reply streams by the next start.

    Raises:
        ConfigError: a required token or secret is missing.
    """
    bot = SlackBot(settings, client, tuning)
    with READINESS.registered("slack", bot.connected):
        await bot.run(stop)
