"""`/kullm help | reset | stop | retry | forget` and the forget confirmation buttons.

Slash commands carry no thread, so `reset`, `stop` and `retry` act on the caller's latest
conversation in that channel (the thread of their last question there, or the DM itself);
`retry` regenerates its last answer into that thread. Every command is
acknowledged at once (Slack's 3-second limit); its answer follows through `response_url`.
"""

from __future__ import annotations

import logging
from typing import Any

from bots.slack.desk import COMMANDS, Desk
from bots.slack.handlers import Inbound
from bots.slack.store import SlackStore
from bots.slack.target import Target, conversation
from bots.slack.texts import st
from kullm_core.client import CoreClient
from kullm_core.replies import Deliveries
from kullm_core.texts import error_text
from kullm_core.texts import t as core_t
from kullm_core.wire import ConversationRef, ErrorEvent, ReplyRecord, UserRef

log = logging.getLogger(__name__)

FORGET_YES = "kullm_forget_yes"
FORGET_NO = "kullm_forget_no"


class Commands:
    def __init__(self, client: CoreClient, store: SlackStore, deliveries: Deliveries,
                 inbound: Inbound, desk: Desk) -> None:
        self.client = client
        self.store = store
        self.deliveries = deliveries
        self.inbound = inbound
        self.desk = desk

    async def on_command(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        await ack()
        team, channel = command.get("team_id", ""), command.get("channel_id", "")
        user = command.get("user_id", "")
        words = (command.get("text") or "").split()
        sub = words[0].lower() if words else "help"
        lang, name = await self.inbound.profile(team, user)
        log.info("slack /kullm %s by %s in %s/%s", sub, user, team, channel)
        if sub == "forget":
            await respond(**self._forget_prompt(user, lang))
            return
        if sub not in ("reset", "stop", "retry", *COMMANDS):
            await respond(text=st("help", lang))
            return
        who = UserRef(platform="slack", id=user, name=name, lang=lang)
        if not self.client.limiter.allowed(who, chat=channel, workspace=team):
            await respond(text=error_text(ErrorEvent(kind="forbidden"), lang))
            return
        conv = await self._conversation(team, channel, user, command.get("thread_ts"))
        if sub in COMMANDS:
            await self.desk.command(sub, words[1:], command, who, conv, respond)
            return
        if sub == "reset":
            if conv is None:
                await respond(text=st("reset_none", lang))
                return
            await self.client.reset(conv)
            await respond(text=core_t("reset", lang))
        elif sub == "retry":
            if conv is None:
                await respond(text=core_t("nothing_to_retry", lang))
                return
            await self._retry(conv, who, str(command.get("trigger_id") or ""))
        else:
            stopped = await self.deliveries.stop_conversation(conv) if conv else None
            await respond(text=core_t("stop_requested" if stopped else "nothing_to_stop", lang))

    async def _retry(self, conv: ConversationRef, who: UserRef, trigger: str) -> None:
        """Regenerate the conversation's last answer, delivered like any reply ("nothing to
        regenerate" comes privately, from the core)."""
        target = Target(conv.workspace, conv.chat, conv.thread, who.id, "", who.lang)
        source = f"slack:{conv.workspace}:{conv.chat}:retry:{trigger}"
        await self.deliveries.deliver(ReplyRecord.ask(
            conv, who, source, "", target.meta(), kind="retry", meta=target.meta()))

    async def _conversation(self, team: str, channel: str, user: str,
                            thread: str | None) -> ConversationRef | None:
        if thread is None:
            thread = await self.store.last(team, channel, user)
        if thread is None and channel.startswith("D"):
            thread = ""
        return None if thread is None else conversation(team, channel, thread)

    def _forget_prompt(self, user: str, lang: str) -> dict[str, Any]:
        question = core_t("forget_confirm", lang)
        return {
            "text": question,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": question}},
                {"type": "actions", "elements": [
                    {"type": "button", "action_id": FORGET_YES, "style": "danger", "value": user,
                     "text": {"type": "plain_text", "text": core_t("forget_yes", lang)}},
                    {"type": "button", "action_id": FORGET_NO, "value": user,
                     "text": {"type": "plain_text", "text": core_t("forget_no", lang)}},
                ]},
            ],
        }

    async def on_forget(self, ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        user = (body.get("user") or {}).get("id", "")
        team = (body.get("team") or {}).get("id", "")
        lang, _ = await self.inbound.profile(team, user)
        turns = await self.client.forget("slack", user)
        log.info("slack user %s forgot %d turns", user, turns)
        await respond(replace_original=True, text=core_t("forgot", lang, turns=turns))

    async def on_forget_cancel(self, ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        user = (body.get("user") or {}).get("id", "")
        team = (body.get("team") or {}).get("id", "")
        lang, _ = await self.inbound.profile(team, user)
        await respond(replace_original=True, text=core_t("forget_cancelled", lang))
