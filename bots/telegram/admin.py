"""`/usage` for everyone; `/stats`, `/mode`, `/quota` and `/usage tg:ID` for admins
(`limits.admins`). Texts only: the caller replies with them."""

from __future__ import annotations

import logging

from telegram import MessageEntity

from bots.telegram.handoff import utf16_len
from bots.telegram.texts import t
from kullm_core.client import CoreClient
from kullm_core.helpdesk.channels import ChannelModes, ModeCommandError, apply_command, describe
from kullm_core.helpdesk.service import Helpdesk, channel_of
from kullm_core.helpdesk.stats import StatsReader, days_back, summary_text, table
from kullm_core.wire import ConversationRef, UserRef

log = logging.getLogger(__name__)

STATS_DAYS = 7
_SETTINGS = frozenset({"mode", "questions", "escalated", "responders", "handoff", "reset"})
_MAX_TEXT = 4096


def telegram_user(word: str) -> UserRef | None:
    """`tg:123` or `123` -> the Telegram user (None for anything else)."""
    raw = word.removeprefix("tg:")
    return UserRef(platform="telegram", id=raw) if raw.isdigit() else None


class Admin:
    def __init__(self, client: CoreClient, modes: ChannelModes, helpdesk: Helpdesk) -> None:
        self.client = client
        self.helpdesk = helpdesk
        self.limiter = client.limiter
        self.modes = modes
        self.reader = StatsReader(client.redis, client.keys)

    def is_admin(self, who: UserRef) -> bool:
        return self.limiter.is_admin(who)

    async def usage(self, who: UserRef, args: list[str]) -> str:
        """The caller's own usage today; an admin may name someone (`tg:123`)."""
        target = telegram_user(args[0]) if args else None
        if args and target is None:
            return t("hd_usage_help", who.lang)
        return await self.helpdesk.usage_text(who, target=target)

    async def quota(self, who: UserRef, args: list[str]) -> str:
        """`/quota tg:123 N|default`: a per-user daily token limit."""
        if not self.is_admin(who):
            return t("hd.admins_only", who.lang)
        target = telegram_user(args[0]) if len(args) == 2 else None
        word = args[1].lower() if len(args) == 2 else ""
        if target is None or not (word.isdigit() or word == "default"):
            return t("hd_quota_help", who.lang)
        return await self.helpdesk.set_quota(who, "", target,
                                             None if word == "default" else int(word))

    async def stats(self, who: UserRef) -> tuple[str, list[MessageEntity]]:
        """The last days' summary, then the table as preformatted text."""
        if not self.is_admin(who):
            return t("hd.admins_only", who.lang), []
        rows = await self.reader.rows(days_back(STATS_DAYS))
        head = t("hd_stats_title", who.lang, days=STATS_DAYS) + "\n" + summary_text(rows) + "\n\n"
        body = table(rows)
        room = _MAX_TEXT - utf16_len(head)
        if utf16_len(body) > room:  # keep whole lines
            body = body[: body.rfind("\n", 0, max(0, room - 1))] or body[:room]
        return head + body, [MessageEntity(MessageEntity.PRE, utf16_len(head), utf16_len(body))]

    async def mode(self, who: UserRef, chat: ConversationRef, args: list[str]) -> str:
        """`/mode all|mention|off`, `/mode questions on`, `/mode responders 1 2`,
        `/mode handoff -100123 [topic]`, `/mode reset`; `/mode` alone shows the settings."""
        if not self.is_admin(who):
            return t("hd.admins_only", who.lang)
        chan = channel_of(chat)
        cfg = await self.modes.get(chan)
        if not args:
            return t("hd.mode_set", who.lang, config=describe(cfg))
        words = args if args[0].lower() in _SETTINGS else ["mode", *args]
        try:
            new = apply_command(cfg, words)
        except ModeCommandError as exc:
            return str(exc)
        if new is None:
            await self.modes.clear(chan)
            new = self.modes.configured(chan)
        else:
            await self.modes.set(chan, new)
        log.info("telegram chat %s: helpdesk config changed (%s)", chan, describe(new))
        return t("hd.mode_set", who.lang, config=describe(new))
