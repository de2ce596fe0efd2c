"""The helpdesk in Slack: the answer buttons pressed, the 👎 comment modal, hand-offs to a
person, `/kullm human | resolve | mode | stats | usage`, and the App Home tab.

Every press is acknowledged at once (Slack's 3 seconds); what the presser alone should read
comes as an ephemeral message, what everyone in the thread should see (the hand-off, its
resolution) is posted there. A button on an answer that was forgotten or expired gets
`hd.gone`. Nothing here ever asks the model for an answer.

Where a hand-off message is lives in its `Escalation.shown` (the core's record). Own keys
(under `{redis.prefix}:slack:`, each for the history retention):

| key                          | what                                                        |
|------------------------------|-------------------------------------------------------------|
| hdopen:{team}:{channel}      | its latest hand-off's escalation (`/kullm resolve`)            |
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Protocol

from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.helpdesk import (
    comment_view,
    handoff_message,
    home_view,
    mentions,
    submitted_comment,
)
from bots.slack.scheduler import Scheduler
from bots.slack.store import SlackStore
from bots.slack.target import conversation
from bots.slack.texts import st
from kullm_core.client import CoreClient
from kullm_core.helpdesk.actions import parse_action, resolve_action
from kullm_core.helpdesk.channels import ModeCommandError, apply_command, describe
from kullm_core.helpdesk.service import Helpdesk, channel_of
from kullm_core.helpdesk.stats import StatsReader, days_back, summary_text, table
from kullm_core.keys import Keys
from kullm_core.redis_text import as_str
from kullm_core.settings import Settings
from kullm_core.texts import t
from kullm_core.wire import ChannelConfig, ConversationRef, Escalation, UserRef

log = logging.getLogger(__name__)

COMMANDS = frozenset({"human", "resolve", "mode", "stats", "usage", "quota"})
_USER = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>|([UW][A-Z0-9]{2,})")
STATS_DAYS = 7
_SETTINGS = frozenset({"mode", "questions", "escalated", "responders", "handoff", "reset"})


def _slack_user(word: str) -> UserRef | None:
    """`<@U123|name>` (a mention, as slash commands send it) or `U123` -> the user."""
    m = _USER.fullmatch(word.strip())
    return UserRef(platform="slack", id=m.group(1) or m.group(2)) if m else None


class Inbound(Protocol):
    """What the desk uses of the message side (`bots.slack.handlers.Inbound`)."""

    client: CoreClient
    helpdesk: Helpdesk
    settings: Settings
    scheduler: Scheduler
    web: AsyncWebClient

    async def profile(self, team: str, user: str) -> tuple[str, str]: ...

    async def ephemeral(self, team: str, channel: str, user: str, thread: str,
                        text: str) -> None: ...


class Desk:
    def __init__(self, inbound: Inbound, store: SlackStore) -> None:
        self.inbound = inbound
        self.client = inbound.client
        self.hd: Helpdesk = inbound.helpdesk
        self.store = store
        self.r = inbound.client.redis
        self.p = Keys(inbound.settings.redis.prefix).adapter("slack")
        self.stats = StatsReader(self.client.redis, self.client.keys)

    # -- Slack calls (through the scheduler) -----------------------------------------------

    async def _call(self, team: str, method: str, fn: Any, channel: str = "") -> Any:
        try:
            return await self.inbound.scheduler.call(method, team, fn, channel=channel)
        except Exception as exc:
            log.warning("slack %s failed in %s: %s", method, team, exc)
            return None

    async def _who(self, team: str, user: str) -> UserRef:
        lang, name = await self.inbound.profile(team, user)
        return UserRef(platform="slack", id=user, name=name, lang=lang)

    async def _tell(self, team: str, channel: str, user: str, thread: str, text: str) -> None:
        await self.inbound.ephemeral(team, channel, user, thread, text)

    async def _post(self, team: str, channel: str, thread: str, **payload: Any) -> str:
        web = self.inbound.web
        resp = await self._call(team, "chat.postMessage", lambda: web.chat_postMessage(
            channel=channel, thread_ts=thread or None, **payload), channel)
        return str(resp["ts"]) if resp is not None else ""

    # -- buttons ---------------------------------------------------------------------------

    async def on_action(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        action = (body.get("actions") or [{}])[0]
        parsed = parse_action(str(action.get("action_id") or ""))
        team = str((body.get("team") or {}).get("id") or "")
        user = str((body.get("user") or {}).get("id") or "")
        container = body.get("container") or {}
        message = body.get("message") or {}
        channel = str((body.get("channel") or {}).get("id") or container.get("channel_id")
                      or "")
        thread = str(message.get("thread_ts") or container.get("thread_ts") or "")
        if parsed is None or not user or not channel:
            return
        kind, ref = parsed
        who = await self._who(team, user)
        log.info("slack helpdesk %s pressed by %s in %s/%s", kind, user, team, channel)
        if kind in ("up", "down"):
            rated = await self.hd.rate(ref, who, team, kind)  # type: ignore[arg-type]
            if rated.ask_comment and body.get("trigger_id"):
                view = comment_view(who.lang, {"job": ref, "channel": channel,
                                               "thread": thread})
                trigger = str(body["trigger_id"])
                await self._call(team, "views.open", lambda: self.inbound.web.views_open(
                    trigger_id=trigger, view=view))
            await self._tell(team, channel, user, thread, rated.text)
        elif kind == "human":
            ex = await self.hd.store.exchange(ref)
            text = t("hd.gone", who.lang) if ex is None else \
                await self.escalate(ex.conversation, who, job_id=ref,
                                    at=str(message.get("ts") or ""))
            await self._tell(team, channel, user, thread, text)
        else:
            done, text = await self.resolve(ref, who, team)
            if not done:
                await self._tell(team, channel, user, thread, text)

    async def on_comment(self, ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        await ack()
        team = str((body.get("team") or {}).get("id") or "")
        user = str((body.get("user") or {}).get("id") or "")
        try:
            meta = json.loads(view.get("private_metadata") or "{}")
        except ValueError:
            meta = {}
        who = await self._who(team, user)
        comment = submitted_comment(view)
        text = (await self.hd.comment(str(meta.get("job") or ""), who, team, comment)
                if comment.strip() else t("hd.comment_skipped", who.lang))
        if meta.get("channel"):
            await self._tell(team, str(meta["channel"]), user, str(meta.get("thread") or ""),
                             text)

    # -- escalation ------------------------------------------------------------------------

    async def escalate(self, conv: ConversationRef, who: UserRef, *, job_id: str = "",
                       at: str = "", question: str = "") -> str:
        """Hand `conv` to a person: the hand-off in the thread, tagging the responders.
        Returns what the asker is told."""
        team, channel = conv.workspace, conv.chat
        if not self.hd.settings.escalation:
            return t("hd.no_escalation", who.lang)
        if job_id and await self.hd.store.exchange(job_id) is None:
            return t("hd.gone", who.lang)
        open_now = await self.hd.store.escalation(conv)
        if open_now is not None and open_now.state == "open":
            return t("hd.already_open", who.lang)
        link = await self._permalink(team, channel, conv.thread or at)
        got = await self.hd.escalate(conv, who, job_id=job_id, link=link, question=question)
        if isinstance(got, str):
            return got
        if not got.opened:
            return t("hd.already_open", who.lang)
        esc, cfg = got.escalation, got.config
        # Responders tagged in a DM would not be notified (they are not in it): a DM's
        # hand-off goes to the helpdesk channel configured for DMs, when there is one.
        where, thread = ((cfg.handoff_chat, "") if conv.direct and cfg.handoff_chat
                         else (channel, conv.thread))
        text = self._handoff_text(esc, who.lang, cfg)
        ts = await self._post(team, where, thread,
                              **handoff_message(text, resolve_action(esc.id, who.lang)))
        await self.hd.store.set_shown(esc.id, {"channel": where, "ts": ts, "lang": who.lang})
        await self.r.set(f"{self.p}:hdopen:{team}:{where}", esc.id, ex=self.store.retention_s)
        return t("hd.called_answering" if cfg.answer_when_escalated else "hd.called", who.lang)

    def _handoff_text(self, esc: Escalation, lang: str, cfg: ChannelConfig) -> str:
        """The hand-off, the asker as a Slack mention (their name, one click to a DM)."""
        asker = esc.asker.rsplit(":", 1)[-1]
        return self.hd.handoff_text(esc.model_copy(update={"asker_name": f"<@{asker}>"}),
                                    lang, mentions(cfg.responders))

    async def _permalink(self, team: str, channel: str, ts: str) -> str:
        if not ts:
            return ""
        web = self.inbound.web
        resp = await self._call(team, "chat.getPermalink", lambda: web.chat_getPermalink(
            channel=channel, message_ts=ts))
        return str(resp.get("permalink") or "") if resp is not None else ""

    async def _groups(self, team: str, who: UserRef, cfg: ChannelConfig) -> frozenset[str]:
        """The responder user groups `who` belongs to (asked only when it matters)."""
        if self.client.limiter.is_admin(who, team) or who.id in cfg.responders:
            return frozenset()
        web, out = self.inbound.web, set()
        for group in (r for r in cfg.responders if r.startswith("S")):
            resp = await self._call(team, "usergroups.users.list",
                                    lambda g=group: web.usergroups_users_list(usergroup=g))
            if resp is not None and who.id in (resp.get("users") or []):
                out.add(group)
        return frozenset(out)

    async def resolve(self, escalation_id: str, who: UserRef, team: str) -> tuple[bool, str]:
        """Close an escalation (responders, members of a responder user group, admins)."""
        esc = await self.hd.store.escalation_by_id(escalation_id)
        groups: frozenset[str] = frozenset()
        if esc is not None and esc.state == "open":
            groups = await self._groups(team, who, await self.hd.modes.get(esc.channel))
        return await self.hd.close(escalation_id, who, team, self, groups)

    # -- HandoffView -----------------------------------------------------------------------

    async def tell(self, esc: Escalation, text: str) -> None:
        conv = esc.conversation
        await self._post(conv.workspace, conv.chat, conv.thread, text=text)

    async def show_resolved(self, esc: Escalation, text: str) -> None:
        where = esc.shown
        if not where.get("ts"):
            return
        cfg = await self.hd.modes.get(esc.channel)
        body = self._handoff_text(esc, str(where.get("lang") or "ko"), cfg) + "\n" + text
        web, team = self.inbound.web, esc.conversation.workspace
        await self._call(team, "chat.update", lambda: web.chat_update(
            channel=where["channel"], ts=where["ts"], **handoff_message(body, None)))

    # -- /kullm human | resolve | mode | stats | usage -------------------------------------

    async def command(self, sub: str, args: list[str], command: dict[str, Any], who: UserRef,
                      conv: ConversationRef | None, respond: Any) -> None:
        team, channel = str(command.get("team_id") or ""), str(command.get("channel_id") or "")
        lang = who.lang
        if sub == "usage":
            target = _slack_user(args[0]) if args else None
            await respond(text=st("hd_usage_help", lang) if args and target is None
                          else await self.hd.usage_text(who, team, target))
        elif sub == "quota":
            target = _slack_user(args[0]) if len(args) == 2 else None
            word = args[1].lower() if len(args) == 2 else ""
            if target is None or not (word.isdigit() or word == "default"):
                await respond(text=st("hd_quota_help", lang))
                return
            await respond(text=await self.hd.set_quota(
                who, team, target, None if word == "default" else int(word)))
        elif sub == "human":
            await respond(text=st("hd_nothing_to_escalate", lang) if conv is None
                          else await self.escalate(conv, who, question=" ".join(args)))
        elif sub == "resolve":
            esc = await self._open_escalation(team, channel, conv)
            if esc is None:
                await respond(text=t("hd.nothing_open", lang))
                return
            _, text = await self.resolve(esc.id, who, team)
            await respond(text=text)
        elif not self.client.limiter.is_admin(who, team):
            await respond(text=t("hd.admins_only", lang))
        elif sub == "stats":
            await respond(text=await self.stats_text())
        else:
            # `/kullm mode all` and `/kullm mode questions on` alike.
            words = args if args and args[0].lower() in _SETTINGS else ["mode", *args]
            await respond(text=await self.set_mode(team, channel, words, lang))

    async def _open_escalation(self, team: str, channel: str,
                               conv: ConversationRef | None) -> Escalation | None:
        """The caller's conversation if it is escalated, else the channel's latest
        hand-off (a responder has asked nothing there)."""
        mine = await self.hd.store.escalation(conv) if conv is not None else None
        if mine is not None and mine.state == "open":
            return mine
        latest = as_str(await self.r.get(f"{self.p}:hdopen:{team}:{channel}"))
        esc = await self.hd.store.escalation_by_id(latest) if latest else None
        return esc if esc is not None and esc.state == "open" else None

    async def set_mode(self, team: str, channel: str, args: list[str], lang: str) -> str:
        chan = channel_of(conversation(team, channel, ""))
        cfg = await self.hd.modes.get(chan)
        try:
            new = apply_command(cfg, args)
        except ModeCommandError as exc:
            return str(exc)
        if new is None:
            await self.hd.modes.clear(chan)
            new = self.hd.modes.configured(chan)
        else:
            await self.hd.modes.set(chan, new)
        log.info("slack channel %s: helpdesk config changed (%s)", chan, describe(new))
        return t("hd.mode_set", lang, config=describe(new))

    async def stats_text(self) -> str:
        rows = await self.stats.rows(days_back(STATS_DAYS))
        return f"{summary_text(rows)}\n```{table(rows)}```"

    async def usage_text(self, who: UserRef) -> str:
        return await self.hd.usage_text(who)

    # -- App Home --------------------------------------------------------------------------

    async def on_home(self, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        if event.get("tab", "home") != "home" or not event.get("user"):
            return
        team = str(context.team_id or body.get("team_id") or "")
        who = await self._who(team, str(event["user"]))
        if self.client.limiter.is_admin(who, team):
            rows = await self.stats.rows(days_back(STATS_DAYS))
            view = home_view(st("hd_home_stats", who.lang, days=STATS_DAYS),
                             f"{summary_text(rows)}\n\n{table(rows)}", monospace=True)
        else:
            view = home_view(st("hd_home_usage", who.lang), await self.usage_text(who),
                             monospace=False)
        web, user = self.inbound.web, who.id
        await self._call(team, "views.publish", lambda: web.views_publish(user_id=user,
                                                                          view=view))
