"""A thread's earlier human messages as context for a question asked mid-thread.

When someone mentions the bot in the middle of a thread, the messages people wrote there
before (`conversations.replies`) are quoted into the prompt under their authors' names
(`users.info`, cached with the profile). Messages the bot already answered are in the
conversation's history and are not quoted twice; the bot's and other bots' messages never
are. The newest `max_messages` are kept, each cut to `max_chars`; the core fits them into the
context budget (oldest dropped first, the question never) and sanitizes them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.render import inbound_text
from bots.slack.scheduler import Scheduler
from bots.slack.target import source_id
from kullm_core.client import CoreClient
from kullm_core.text_clean import clean_text
from kullm_core.wire import ConversationRef, Job, Quoted

log = logging.getLogger(__name__)

Profile = Callable[[str, str], Awaitable[tuple[str, str]]]
_PERSON_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})


def _by_person(m: dict[str, Any], bot_user: str | None) -> bool:
    return (not m.get("bot_id") and not m.get("bot_profile") and bool(m.get("user"))
            and m.get("user") != bot_user and m.get("subtype") in _PERSON_SUBTYPES)


class ThreadContext:
    def __init__(self, client: CoreClient, web: AsyncWebClient, scheduler: Scheduler,
                 profile: Profile, *, max_messages: int = 20, max_chars: int = 2000) -> None:
        self.client = client
        self.web = web
        self.scheduler = scheduler
        self.profile = profile
        self.max_messages = max_messages
        self.max_chars = max_chars

    async def quoted(self, conv: ConversationRef, before_ts: str,
                     bot_user: str | None) -> list[Quoted]:
        """The thread's human messages before `before_ts` that are not already exchanges
        with the bot, oldest first ([] when Slack cannot be read: the question goes on)."""
        team, channel, thread = conv.workspace, conv.chat, conv.thread
        try:
            resp = await self.scheduler.call(
                "conversations.replies", team,
                lambda: self.web.conversations_replies(channel=channel, ts=thread, limit=200))
        except Exception as exc:
            log.warning("slack %s/%s: thread not read for context (%s)", team, channel, exc)
            return []
        answered = {turn.job_id for turn in await self.client.history(conv)}
        picked = [m for m in resp.get("messages") or []
                  if _by_person(m, bot_user) and str(m.get("ts", "")) < before_ts
                  and Job.id_for(source_id(team, channel, str(m["ts"]))) not in answered]
        out: list[Quoted] = []
        for m in picked[-self.max_messages:]:
            text = inbound_text(clean_text(str(m.get("text") or "")), bot_user)
            if not text:
                continue
            user = str(m["user"])
            _, name = await self.profile(team, user)
            out.append(Quoted(user_id=user, name=name or user, text=text[:self.max_chars],
                              at=float(m["ts"])))
        if out:
            log.info("slack %s/%s: %d earlier thread message(s) as context", team, channel,
                     len(out))
        return out
