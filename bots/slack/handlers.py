"""Incoming Slack events -> questions for the core (Bolt listeners).

Who gets an answer: a mention in a channel (answered in that message's thread, the thread
being the conversation everyone in it shares), a later message in a thread the bot is part of
(unless mentions are required there), a DM (top level = one conversation; a DM thread = its own),
and an AI-app (assistant) thread. The channel's helpdesk mode (`Helpdesk.should_answer`) has
the last word: `all` also answers every top-level message in its thread, `off` nothing; in a
conversation handed to a person the bot stays silent (every message there is still shown to
the helpdesk, which times the first human reply). A mention mid-thread quotes the thread's
earlier human messages into the prompt (`bots.slack.thread`). Never: the bot's own or other
bots' messages, edits, deletions and other subtypes. Each Slack message is answered once,
however often and under however many event types Slack delivers it. A message with a file
gets the "text only" answer: the bot never pretends to have read an attachment.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.render import inbound_text
from bots.slack.scheduler import Scheduler
from bots.slack.store import LOCALE_RETRY_TTL_S, SlackStore
from bots.slack.target import Target, conversation, source_id
from bots.slack.texts import st, suggested_prompts
from bots.slack.thread import ThreadContext
from kullm_core import logctx, metrics
from kullm_core.client import CoreClient
from kullm_core.helpdesk.channels import Seen
from kullm_core.helpdesk.service import Helpdesk, channel_of
from kullm_core.replies import Deliveries
from kullm_core.settings import Settings
from kullm_core.text_clean import clean_text
from kullm_core.texts import error_text, lang_of
from kullm_core.texts import t as core_t
from kullm_core.wire import ConversationRef, ErrorEvent, Quoted, ReplyRecord, UserRef

log = logging.getLogger(__name__)

_USER_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})


def is_from_person(event: dict[str, Any], bot_user_id: str | None) -> bool:
    """A new message written by a person (not a bot, not an edit/deletion/join...)."""
    if event.get("bot_id") or event.get("bot_profile") or event.get("hidden"):
        return False
    if event.get("subtype") not in _USER_SUBTYPES:
        return False
    user = event.get("user")
    return bool(user) and user != bot_user_id


class Inbound:
    """Bolt listeners for messages, mentions and the assistant surface."""

    def __init__(self, settings: Settings, client: CoreClient, web: AsyncWebClient,
                 scheduler: Scheduler, store: SlackStore, deliveries: Deliveries) -> None:
        self.settings = settings
        self.client = client
        self.web = web
        self.scheduler = scheduler
        self.store = store
        self.deliveries = deliveries
        self.locale_ttl_s = store.tuning.locale_ttl_s
        self.suggested_prompts = store.tuning.suggested_prompts
        self.refusals = deliveries.refusals
        """The core's throttle: our refusals and the core's share one per channel."""
        client.on_forget(self._forget)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.helpdesk = Helpdesk(client)
        self.thread_context = ThreadContext(client, web, scheduler, self.profile)

    # -- Bolt listeners --------------------------------------------------------------------

    async def on_mention(self, body: dict[str, Any], event: dict[str, Any],
                         context: Any) -> None:
        if not is_from_person(event, context.bot_user_id):
            return
        thread = event.get("thread_ts") or event["ts"]
        top, permitted = thread == event["ts"], self._permitted(body, event, context)
        conv = conversation(self._team(body, context), event["channel"], thread)
        # Mid-thread, the helpdesk sees the message even from someone not allowed to ask (it
        # may be the first human reply in a conversation handed to a person).
        answer = (permitted or not top) and await self._answers(conv, event, top=top,
                                                                mentioned=True)
        if not permitted:
            await self._forbidden(body, event, context, thread)
            return
        if not answer:
            return
        if not await self._fresh(body, event, context):
            return
        await self._question(event, context, thread=thread, reply_thread=thread,
                             quote=thread != event["ts"])

    async def on_message(self, body: dict[str, Any], event: dict[str, Any],
                         context: Any) -> None:
        if not is_from_person(event, context.bot_user_id):
            return
        bot = context.bot_user_id
        permitted = self._permitted(body, event, context)
        if event.get("channel_type") == "im":
            await self._direct(body, event, context, permitted, assistant=False)
            return
        if bot and f"<@{bot}>" in (event.get("text") or ""):
            return  # the app_mention event answers it
        ts, thread = event["ts"], event.get("thread_ts") or event["ts"]
        top, team = thread == ts, self._team(body, context)
        if top and not permitted:
            return  # a top-level message of someone not allowed: no Redis work at all
        follows = not top and not self.settings.slack.require_mention_in_threads \
            and await self.store.in_thread(team, event["channel"], thread)
        # Every thread message is seen by the helpdesk (it times the first human reply in
        # a conversation handed to a person), even one the bot will not answer.
        conv = conversation(team, event["channel"], thread)
        if not await self._answers(conv, event, top=top, follows=follows) or not permitted:
            return
        if not await self._fresh(body, event, context):
            return
        await self._question(event, context, thread=thread, reply_thread=thread)

    async def on_assistant_message(self, body: dict[str, Any], event: dict[str, Any],
                                   context: Any) -> None:
        if not is_from_person(event, context.bot_user_id):
            return
        await self._direct(body, event, context, self._permitted(body, event, context),
                           assistant=True)

    async def _direct(self, body: dict[str, Any], event: dict[str, Any], context: Any,
                      permitted: bool, *, assistant: bool) -> None:
        """A message in a DM or an assistant thread: every one is a question to the bot."""
        thread = event.get("thread_ts") or ""
        if not permitted:
            await self._forbidden(body, event, context, thread)
            return
        conv = conversation(self._team(body, context), event["channel"], thread)
        if not await self._answers(conv, event, dm=True):
            return
        if not await self._fresh(body, event, context):
            return
        await self._question(event, context, thread=thread, reply_thread=thread,
                             assistant=assistant)

    async def on_assistant_started(self, body: dict[str, Any], event: dict[str, Any],
                                   context: Any) -> None:
        if not await self._fresh(body, event, context):
            return
        thread = event.get("assistant_thread") or {}
        channel, ts, user = thread.get("channel_id"), thread.get("thread_ts"), thread.get("user_id")
        if not channel or not ts:
            return
        team = self._team(body, context)
        lang, _ = await self.profile(team, user or "")
        await self.say(team, channel, ts, core_t("start", lang))
        if self.suggested_prompts:
            prompts, title = suggested_prompts(lang), st("prompts_title", lang)
            await self._side_call(
                team, "assistant.threads.setSuggestedPrompts",
                lambda: self.web.assistant_threads_setSuggestedPrompts(
                    channel_id=channel, thread_ts=ts, prompts=prompts, title=title))

    async def on_context_changed(self) -> None:
        """The user switched channels in the split view: nothing to store (no API calls)."""

    # -- the common path -------------------------------------------------------------------

    async def _answers(self, conv: ConversationRef, event: dict[str, Any], *, dm: bool = False,
                       top: bool = False, mentioned: bool = False, follows: bool = False) -> bool:
        """The channel's mode and an open escalation decide (`Helpdesk.should_answer`). In
        mode `mention`, a thread the bot follows counts as addressed to it (as without
        modes); in mode `all` it is answered as the mode says (`questions_only`)."""
        if follows and not mentioned:
            cfg = await self.helpdesk.modes.get(channel_of(conv))
            mentioned = cfg.mode == "mention"
        who = UserRef(platform="slack", id=str(event.get("user") or ""))
        return await self.helpdesk.should_answer(conv, who, Seen(
            dm=dm, mentioned=mentioned, top_level=top, text=str(event.get("text") or ""),
            in_bot_thread=follows))

    async def _forget(self, platform: str, user: str) -> None:
        if platform == "slack":
            await self.store.forget_user(user)
            await self.deliveries.forget_user(platform, user)

    def _team(self, body: dict[str, Any], context: Any) -> str:
        return str(context.team_id or body.get("team_id") or "")

    def _permitted(self, body: dict[str, Any], event: dict[str, Any], context: Any) -> bool:
        """The allowlists, before any Redis or network work (pure)."""
        who = UserRef(platform="slack", id=str(event.get("user") or ""))
        return self.client.limiter.allowed(who, chat=str(event.get("channel") or ""),
                                           workspace=self._team(body, context))

    def _may_refuse(self, team: str, channel: str) -> bool:
        """One refusal per channel per refusal interval; the rest are dropped (counted)."""
        return self.refusals.allow(f"slack:{channel}")

    async def _forbidden(self, body: dict[str, Any], event: dict[str, Any], context: Any,
                         thread: str) -> None:
        team, channel, user = self._team(body, context), event["channel"], event["user"]
        log.debug("slack %s/%s: user %s not allowed", team, channel, user)
        if self._may_refuse(team, channel):
            lang, _ = await self.profile(team, user)
            await self.ephemeral(team, channel, user, thread,
                                 error_text(ErrorEvent(kind="forbidden"), lang))

    async def _fresh(self, body: dict[str, Any], event: dict[str, Any], context: Any) -> bool:
        """False for an event (or a message) this adapter has already taken."""
        event_id = body.get("event_id")
        if event_id and await self.client.seen("slack", f"ev:{event_id}"):
            log.info("slack event %s: duplicate delivery ignored", event_id)
            return False
        ts, channel = event.get("ts"), event.get("channel")
        if ts and channel:
            team = self._team(body, context)
            if await self.client.seen("slack", f"msg:{team}:{channel}:{ts}"):
                log.info("slack message %s in %s: already taken", ts, channel)
                return False
        return True

    async def _question(self, event: dict[str, Any], context: Any, *, thread: str,
                        reply_thread: str, assistant: bool = False, quote: bool = False) -> None:
        team = self._team({}, context)
        channel, ts, user = event["channel"], event["ts"], event["user"]
        metrics.received("slack")
        conv = conversation(team, channel, thread)
        logctx.bind(platform="slack", conversation=conv.key)
        text = inbound_text(clean_text(event.get("text") or ""), context.bot_user_id)
        known = await self.cached_profile(team, user)
        # A question never waits for users.info (Tier 4: a burst of new users would queue
        # behind it); only a short answer of our own needs the language first.
        files = bool(event.get("files"))
        if known is None and (files or not text or quote):
            # Quoting the thread waits for Slack anyway: the asker's name goes with the
            # quoted names.
            known = await self.profile(team, user)
        lang, name = known or ("ko", "")
        if files or not text:
            await self.say(team, channel, reply_thread,
                           st("text_only" if files else "empty_mention", lang))
            return
        who = UserRef(platform="slack", id=user, name=name, lang=lang)
        target = Target(team, channel, reply_thread, user, ts, lang, assistant)
        quoted: list[Quoted] = (await self.thread_context.quoted(conv, ts, context.bot_user_id)
                                if quote else [])
        rec = ReplyRecord.ask(conv, who, source_id(team, channel, ts), text, target.meta(),
                              meta=target.meta(), context=quoted)
        if not await self.deliveries.deliver(rec):
            return
        if known is None:
            self._background(self._learn_profile(team, user))
        if rec.job_id not in self.deliveries.in_flight(conv):
            return  # refused: the asker was told privately
        if await self.client.warming():
            await self.ephemeral(team, channel, user, reply_thread, st("warming_up", lang))
        if not target.is_dm:
            await self.store.join_thread(team, channel, thread)
        await self.store.set_last(team, channel, user, thread)

    # -- outbound helpers (through the scheduler) ------------------------------------------

    async def _side_call(self, team: str, method: str, fn: Any) -> Any:
        """A Web API call of `method` within the send budget; failures only log."""
        try:
            return await self.scheduler.call(method, team, fn)
        except Exception as exc:
            log.warning("slack %s call failed in %s: %s", method, team, exc)
            return None

    async def say(self, team: str, channel: str, thread: str, text: str) -> None:
        """A short visible answer (empty mention, greeting, text only)."""
        try:
            await self.scheduler.call("chat.postMessage", team, lambda: self.web.chat_postMessage(
                channel=channel, thread_ts=thread or None, text=text), channel=channel)
        except Exception as exc:
            log.warning("slack post failed in %s/%s: %s", team, channel, exc)

    async def ephemeral(self, team: str, channel: str, user: str, thread: str,
                        text: str) -> None:
        """A message only `user` sees (refusals, limits)."""
        await self._side_call(team, "chat.postEphemeral", lambda: self.web.chat_postEphemeral(
            channel=channel, user=user, text=text, thread_ts=thread or None))

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _learn_profile(self, team: str, user: str) -> None:
        """Cache the asker's language and name for their next question."""
        try:
            await self.profile(team, user)
        except Exception as exc:
            log.warning("slack user %s: profile lookup failed (%s)", user, exc)

    async def cached_profile(self, team: str, user: str) -> tuple[str, str] | None:
        cached = await self.store.locale(team, user) if user else "|"
        if cached is None:
            return None
        locale, _, name = cached.partition("|")
        return lang_of(locale or None), name

    async def profile(self, team: str, user: str) -> tuple[str, str]:
        """(UI language, user name) from users.info, cached in Redis."""
        known = await self.cached_profile(team, user)
        if known is not None:
            return known
        resp = await self._side_call(team, "users.info", lambda: self.web.users_info(
            user=user, include_locale=True))
        info = (resp.get("user") if resp is not None else None) or {}
        locale, name = str(info.get("locale") or ""), str(info.get("name") or "")
        ttl = self.locale_ttl_s if resp is not None else min(LOCALE_RETRY_TTL_S, self.locale_ttl_s)
        await self.store.set_locale(team, user, f"{locale}|{name}", ttl)
        return lang_of(locale or None), name
