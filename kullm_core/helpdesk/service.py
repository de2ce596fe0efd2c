"""`Helpdesk`: what an adapter calls when someone presses a button or runs a helpdesk
command. Returns texts to show; the adapter chooses how (a toast, an ephemeral message, a
post in the thread) and renders mentions in its own syntax."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from kullm_core import metrics
from kullm_core.client import CoreClient
from kullm_core.helpdesk.channels import ChannelModes, Seen, should_answer
from kullm_core.helpdesk.store import HelpdeskStore, asker_of
from kullm_core.limits import chat_id
from kullm_core.limits import user_id as qualified
from kullm_core.texts import t
from kullm_core.wire import ChannelConfig, ConversationRef, Escalation, Rating, UserRef

log = logging.getLogger(__name__)


def channel_of(conv: ConversationRef) -> str:
    """The qualified chat a conversation lives in (the unit of modes and statistics).
    Direct messages all count as one place per platform account (`tg:dm`, `slack:T1:dm`):
    a DM's chat id names the user, and statistics outlive /forget."""
    if conv.direct or (conv.user and conv.chat == conv.user):
        return chat_id(conv.platform, "dm", conv.workspace)
    return chat_id(conv.platform, conv.chat, conv.workspace)


@dataclass(frozen=True)
class Rated:
    text: str
    """Short confirmation for the rater (a toast / ephemeral)."""
    ok: bool
    ask_comment: bool = False
    """👎 taken: offer the rater a comment (Slack modal, Telegram next message)."""


@dataclass(frozen=True)
class Handoff:
    """An escalation that was just opened (or the one already open)."""

    escalation: Escalation
    opened: bool
    config: ChannelConfig
    """The channel's config: its responders to tag, its helpdesk group (Telegram)."""


class HandoffView(Protocol):
    """How a platform shows a hand-off once it is resolved (`Escalation.shown` says where
    its message is)."""

    async def tell(self, esc: Escalation, text: str) -> None:
        """Say `text` in the escalated conversation."""

    async def show_resolved(self, esc: Escalation, text: str) -> None:
        """The hand-off message without its Resolved button, `text` under it."""


class Helpdesk:
    def __init__(self, client: CoreClient) -> None:
        self.client = client
        self.settings = client.settings.helpdesk
        self.store: HelpdeskStore = client.helpdesk
        self.modes = ChannelModes(client.redis, client.keys, self.settings)

    # -- answering or not --------------------------------------------------------------------

    async def should_answer(self, conv: ConversationRef, author: UserRef, msg: Seen) -> bool:
        """Whether the bot answers `msg` here: the channel's mode, and an open escalation
        (the bot stays silent in it unless the channel says otherwise). Every message seen
        in an escalated conversation also times the first human reply."""
        cfg = await self.modes.get(channel_of(conv))
        esc = await self.store.escalation(conv)
        if esc is not None and esc.state == "open":
            await self.store.note_message(conv, asker_of(conv, author))
            if not cfg.answer_when_escalated:
                return False
        return should_answer(cfg, msg)

    # -- feedback ----------------------------------------------------------------------------

    async def rate(self, job_id: str, rater: UserRef, workspace: str, rating: Rating) -> Rated:
        got = await self.store.rate(job_id, rater, workspace, rating)
        lang = rater.lang
        if got is None:
            log.info("job %s: rating on an answer that is gone (forgotten or expired)", job_id)
            return Rated(t("hd.gone", lang), ok=False)
        _, before = got
        if before != rating:
            metrics.rated(rater.platform, rating)
        key = "hd.rated_again" if before is not None and before != rating else "hd.rated"
        return Rated(t(key, lang, rating="👍" if rating == "up" else "👎"), ok=True,
                     ask_comment=rating == "down")

    async def comment(self, job_id: str, rater: UserRef, workspace: str, text: str) -> str:
        if not text.strip():
            return t("hd.comment_empty", rater.lang)
        ok = await self.store.comment(job_id, rater, workspace, text.strip())
        return t("hd.comment_saved" if ok else "hd.gone", rater.lang)

    # -- escalation --------------------------------------------------------------------------

    async def escalate(self, conv: ConversationRef, asker: UserRef, *, job_id: str = "",
                       link: str = "", question: str = "") -> Handoff | str:
        """Hand `conv` to a person. `job_id`: the answer the button was under (its question
        goes into the hand-off); otherwise `question` (what the asker wrote with the
        command), else the conversation's last question. Returns the hand-off, or a text
        saying why not."""
        if not self.settings.escalation:
            return t("hd.no_escalation", asker.lang)
        channel = channel_of(conv)
        turns = await self.client.history(conv)
        if job_id:
            if await self.store.exchange(job_id) is None:
                return t("hd.gone", asker.lang)
            question = next((x.user for x in reversed(turns) if x.job_id == job_id), "")
        elif not question and turns:
            question = turns[-1].user
        esc = Escalation(id=Escalation.id_for(conv), conversation=conv, channel=channel,
                         asker=asker_of(conv, asker), asker_name=asker.name,
                         question=question[:1500], job_id=job_id, link=link)
        esc, opened = await self.store.open_escalation(esc, asker)
        if opened:
            metrics.escalated(conv.platform)
        cfg = await self.modes.get(channel)
        log.info("escalation %s in %s: %s", esc.id, channel, "opened" if opened else "open")
        return Handoff(esc, opened, cfg)

    def may_resolve(self, user: UserRef, workspace: str, cfg: ChannelConfig,
                    groups: frozenset[str] = frozenset()) -> bool:
        """Responders (by id, or a member of a responder user group in `groups`) and admins."""
        if self.client.limiter.is_admin(user, workspace):
            return True
        return user.id in cfg.responders or not groups.isdisjoint(cfg.responders)

    async def resolve(self, escalation_id: str, user: UserRef, workspace: str,
                      groups: frozenset[str] = frozenset()) -> tuple[Escalation | None, str]:
        """Close an escalation. Returns it (None when not resolved) and the text to show."""
        esc = await self.store.escalation_by_id(escalation_id)
        if esc is None:
            return None, t("hd.gone", user.lang)
        if esc.state != "open":
            return None, t("hd.already_resolved", user.lang)
        cfg = await self.modes.get(esc.channel)
        if not self.may_resolve(user, workspace, cfg, groups):
            return None, t("hd.not_responder", user.lang)
        done = await self.store.resolve(escalation_id, asker_of(esc.conversation, user))
        if done is None:
            return None, t("hd.already_resolved", user.lang)
        metrics.resolved(esc.conversation.platform)
        took = time.time() - done.opened_at
        log.info("escalation %s resolved after %.0f s", escalation_id, took)
        return done, t("hd.resolved", user.lang, name=user.name or user.id)

    async def usage_text(self, user: UserRef, workspace: str = "",
                         target: UserRef | None = None) -> str:
        """`/usage` (`/kullm usage`): the caller's tokens today and limits; an admin may look
        `target` up. One text for every surface."""
        lang = user.lang
        if target is not None and not self.client.limiter.is_admin(user, workspace):
            return t("hd.admins_only", lang)
        use = await self.client.limiter.usage(target or user)
        per_minute = use.requests_per_minute or "∞"
        if use.daily_limit:
            text = t("hd.usage", lang, used=use.used_today, limit=use.daily_limit,
                     requests=use.requests_last_minute, per_minute=per_minute)
        else:
            text = t("hd.usage_unlimited", lang, used=use.used_today) + " · " + t(
                "hd.requests", lang, requests=use.requests_last_minute, per_minute=per_minute)
        return text if target is None else f"{qualified(target, workspace)} · {text}"

    async def set_quota(self, admin: UserRef, workspace: str, target: UserRef,
                        limit: int | None) -> str:
        """An admin sets `target`'s daily token limit (None: back to `limits.daily_tokens`)."""
        lang = admin.lang
        if not self.client.limiter.is_admin(admin, workspace):
            return t("hd.admins_only", lang)
        lim = self.client.limiter
        await lim.set_daily_limit(lim.owner(target), limit)
        log.info("quota of user %s:%s set to %s by admin %s", target.platform, target.id,
                 limit, admin.id)
        shown = t("hd.quota_default", lang, n=self.client.settings.limits.daily_tokens) \
            if limit is None else str(limit)
        return t("hd.quota_set", lang, user=qualified(target, workspace), limit=shown)

    async def close(self, escalation_id: str, user: UserRef, workspace: str,
                    view: HandoffView, groups: frozenset[str] = frozenset()) -> tuple[bool, str]:
        """`resolve`, then the conversation is told and the hand-off loses its button.
        Returns whether it was resolved and the text to show the caller."""
        done, text = await self.resolve(escalation_id, user, workspace, groups)
        if done is None:
            return False, text
        await view.tell(done, text)
        if done.shown:
            await view.show_resolved(done, text)
        return True, text

    def handoff_text(self, esc: Escalation, lang: str, mentions: str) -> str:
        """The hand-off posted for responders (`mentions` in the platform's syntax)."""
        lines = [t("hd.handoff", lang, name=esc.asker_name or esc.asker, mentions=mentions)]
        if esc.question:
            lines.append(t("hd.handoff_question", lang, question=esc.question))
        if esc.link:
            lines.append(t("hd.handoff_link", lang, link=esc.link))
        return "\n".join(lines)
