"""Telegram updates in, core calls out: questions, commands, and everything else."""

from __future__ import annotations

import logging
import time
from typing import Literal

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    ReplyParameters,
    Update,
)
from telegram import User as TgUser
from telegram.ext import (
    Application,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from bots.telegram.helpdesk import HelpdeskHandlers
from bots.telegram.outbox import Outbox, OutboxOp, SendResult
from bots.telegram.routing import (
    PLATFORM,
    addressed_text,
    command_args,
    conversation,
    is_private,
    replies_to_bot,
    source_id,
    thread_of,
    user_ref,
)
from bots.telegram.texts import t
from kullm_core import logctx, metrics
from kullm_core.client import CoreClient
from kullm_core.helpdesk.channels import Seen
from kullm_core.replies import Deliveries
from kullm_core.settings import Settings
from kullm_core.text_clean import clean_text
from kullm_core.texts import lang_of
from kullm_core.wire import ErrorEvent, ReplyRecord

log = logging.getLogger(__name__)

_MAX_REFUSED = 4096

Ctx = ContextTypes.DEFAULT_TYPE

NON_TEXT = (
    filters.Sticker.ALL | filters.PHOTO | filters.VOICE | filters.AUDIO | filters.VIDEO
    | filters.VIDEO_NOTE | filters.Document.ALL | filters.ANIMATION | filters.LOCATION
    | filters.CONTACT | filters.POLL | filters.Dice.ALL
)
NEW = filters.UpdateType.MESSAGE  # edited messages are not answered again


class Handlers:
    """The bot's behaviour; `install` wires it into a PTB `Application`."""

    def __init__(self, settings: Settings, client: CoreClient, deliveries: Deliveries,
                 outbox: Outbox, bot: Bot) -> None:
        self.s = settings.telegram
        self.limits = settings.limits
        self._refused_until: dict[tuple[int, int], float] = {}
        self.dropped_while_limited = 0
        self.client = client
        self.deliveries = deliveries
        self.outbox = outbox
        self.bot = bot
        client.on_forget(deliveries.forget_user)  # the records of the user's replies
        self.hd = HelpdeskHandlers(settings, client, outbox, _bot_id(settings))

    def install(self, app: Application) -> None:  # type: ignore[type-arg]
        app.add_handler(TypeHandler(Update, self.gate), group=-1)
        commands = {
            "start": self.cmd_start, "help": self.cmd_help, "ask": self.cmd_ask,
            "reset": self.cmd_reset, "stop": self.cmd_stop, "retry": self.cmd_retry,
            "forget": self.cmd_forget,
        }
        for name, callback in commands.items():
            app.add_handler(CommandHandler(name, callback, filters=NEW))
        self.hd.install(app)
        app.add_handler(CallbackQueryHandler(self.forget_answer, pattern=r"^forget:"))
        app.add_handler(CallbackQueryHandler(self.unknown_button))
        app.add_handler(MessageHandler(NEW & filters.TEXT & ~filters.COMMAND, self.on_text))
        app.add_handler(MessageHandler(NEW & NON_TEXT, self.on_non_text))
        app.add_error_handler(self.on_error)

    # -- gate: duplicates and other bots -----------------------------------------------------

    async def gate(self, update: Update, ctx: Ctx) -> None:
        """Drop what needs no answer before any Redis or network work: updates from bots,
        from people not allowed (one merged refusal per chat), and then duplicates
        (redelivery, restart, another replica)."""
        logctx.bind(platform=PLATFORM)
        user = update.effective_user
        if user is not None and user.is_bot:
            raise ApplicationHandlerStop
        if update.message is None and update.callback_query is None:
            log.debug("update %s: nothing to answer", update.update_id)
            raise ApplicationHandlerStop
        msg = update.message
        if user is not None and not self._permitted(update, user):
            if msg is not None and self._speaks_to_me(msg):
                log.debug("chat %s: user %s is not allowed", msg.chat.id, user.id)
                self.refuse(msg, t("error.forbidden", lang_of(user.language_code)))
            raise ApplicationHandlerStop
        if msg is not None and self._told_to_wait(msg):
            raise ApplicationHandlerStop
        if await self.client.seen(PLATFORM, f"{self.bot.id}:{update.update_id}"):
            log.info("update %s: duplicate; ignored", update.update_id)
            raise ApplicationHandlerStop

    def _permitted(self, update: Update, user: TgUser) -> bool:
        """The allowlists (pure, no I/O). /forget is for everyone, allowlisted or not."""
        chat = update.effective_chat
        if self.client.limiter.allowed(user_ref(user), chat=str(chat.id) if chat else ""):
            return True
        # /forget is for everyone; resolving a hand-off is for responders, who may sit in a
        # helpdesk group outside the allowlists (`Helpdesk.may_resolve` decides).
        query = update.callback_query
        if query is not None:
            return (query.data or "").startswith(("forget:", "hd:res:"))
        msg = update.message
        word = (msg.text or "").split("@", 1)[0].split(" ", 1)[0] if msg is not None else ""
        return word in ("/forget", "/resolve")

    def _speaks_to_me(self, msg: Message) -> bool:
        """Private, a command, or a group message that mentions or answers the bot."""
        return is_private(msg) or (msg.text or "").startswith("/") or (
            addressed_text(msg, self.bot.id, self.bot.username) is not None
        )

    def refuse(self, msg: Message, text: str, kind: str = "") -> None:
        """A refusal or hint, at most one per chat (and `kind`) per refusal interval; the
        rest are dropped (counted in the log). Not awaited: the chat's next update need not
        wait for the send."""
        place = f"{PLATFORM}:{msg.chat.id}" + (f":{kind}" if kind else "")
        if self.deliveries.refusals.allow(place):  # shared with the core's refusals
            self.outbox.submit(self._reply_op(msg, text))

    # -- questions -------------------------------------------------------------------------

    async def on_text(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is None or msg.from_user is None:
            return
        if await self.hd.desk.take_comment(msg):  # the 👎 comment the user was asked for
            return
        text = msg.text or ""
        if is_private(msg):
            if await self.hd.answers(msg, Seen(dm=True, mentioned=True, top_level=True,
                                               text=text)):
                await self.ask(msg, msg.from_user, text)
            return
        # A mention or a reply to the bot is addressed to it (mode `mention`); mode `all`
        # also answers every other top-level message; an escalation silences it.
        question = addressed_text(msg, self.bot.id, self.bot.username)
        top = msg.reply_to_message is None or msg.reply_to_message.forum_topic_created is not None
        seen = Seen(dm=False, mentioned=question is not None, top_level=top,
                    text=question if question is not None else text,
                    in_bot_thread=replies_to_bot(msg, self.bot.id))
        if await self.hd.answers(msg, seen):
            await self.ask(msg, msg.from_user, question if question is not None else text)

    async def cmd_ask(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is None or msg.from_user is None:
            return
        question = command_args(msg)
        if await self.hd.answers(msg, Seen(dm=is_private(msg), mentioned=True, top_level=True,
                                           text=question)):
            await self.ask(msg, msg.from_user, question, usage="ask_usage")

    async def on_non_text(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is None or msg.from_user is None:
            return
        addressed = is_private(msg) or addressed_text(msg, self.bot.id,
                                                      self.bot.username) is not None
        # Seen by the helpdesk too (a first human reply may be a photo); silent when off or
        # in an escalated conversation.
        seen = Seen(dm=is_private(msg), mentioned=addressed, top_level=True, text="")
        if await self.hd.answers(msg, seen) and addressed:
            self.refuse(msg, t("text_only", lang_of(msg.from_user.language_code)))

    async def ask(
        self, msg: Message, user: TgUser, question: str, usage: str = "empty_mention",
        kind: Literal["ask", "retry"] = "ask",
    ) -> None:
        uref = user_ref(user)
        metrics.received(PLATFORM)
        question = clean_text(question)
        if kind == "ask" and not question.strip():
            self.refuse(msg, t(usage, uref.lang), kind=usage)
            return
        cap = self.limits.max_pending_per_user
        pending = len(self.deliveries.in_flight_of(uref, str(msg.chat.id)))
        if cap and pending >= cap and not self.client.limiter.is_admin(uref):
            self.refuse(msg, t("too_many_pending", uref.lang, pending=pending))
            return
        conv = conversation(msg, user.id, self.s.group_scope)
        src, thread = source_id(msg, self.bot.id), thread_of(msg)
        meta = {"chat_id": str(msg.chat.id), "reply_to": str(msg.message_id),
                "thread_id": str(thread or "")}
        target = {"chat_id": msg.chat.id, "thread_id": thread, "reply_to": msg.message_id}
        context = await self.hd.context(msg, conv) if kind == "ask" else []
        rec = ReplyRecord.ask(conv, uref, src, question, target, kind=kind, meta=meta,
                              context=context)
        logctx.bind(job_id=rec.job_id, conversation=conv.key)
        refusals: list[ErrorEvent] = []
        if not await self.deliveries.deliver(rec, on_refused=refusals.append):
            log.info("job %s: already being delivered; ignored", rec.job_id)
            return
        for err in refusals:
            self._remember_refusal(msg.chat.id, user.id, err)
        log.info("job %s: chat %s user %s (%s)", rec.job_id, msg.chat.id, user.id,
                 refusals[0].kind if refusals else "delivering")

    def _remember_refusal(self, chat_id: int, user_id: int, err: ErrorEvent) -> None:
        """A user told to wait (rate limit, quota) is not asked about again until then: their
        questions meanwhile are dropped before any Redis work (the refusal said when)."""
        wait = err.params.get("retry_after")
        if err.kind not in ("rate_limited", "quota") or not isinstance(wait, int):
            return
        now = time.monotonic()
        if len(self._refused_until) > _MAX_REFUSED:
            self._refused_until = {k: v for k, v in self._refused_until.items() if v > now}
        self._refused_until[(chat_id, user_id)] = now + wait
        log.info("chat %s: user %s told to wait %d s (%s); their messages until then are "
                 "dropped", chat_id, user_id, wait, err.kind)

    def _told_to_wait(self, msg: Message) -> bool:
        user = msg.from_user
        if user is None or (msg.text or "").startswith("/"):
            return False
        until = self._refused_until.get((msg.chat.id, user.id))
        if until is None:
            return False
        if time.monotonic() < until:
            self.dropped_while_limited += 1
            return True
        del self._refused_until[(msg.chat.id, user.id)]
        return False

    # -- commands --------------------------------------------------------------------------

    async def cmd_start(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is not None and msg.from_user is not None:
            await self.reply(msg, t("start", lang_of(msg.from_user.language_code)))

    async def cmd_help(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is None or msg.from_user is None:
            return
        lang = lang_of(msg.from_user.language_code)
        text = "\n\n".join([t("help", lang), t("help_group", lang, bot=self.bot.username),
                            t("help_helpdesk", lang)])
        if self.client.limiter.is_admin(user_ref(msg.from_user)):
            text += "\n\n" + t("help_admin", lang)
        await self.reply(msg, text)

    async def cmd_reset(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is None or msg.from_user is None:
            return
        conv = conversation(msg, msg.from_user.id, self.s.group_scope)
        await self.client.reset(conv)
        log.info("chat %s: conversation reset by user %s", msg.chat.id, msg.from_user.id)
        await self.reply(msg, t("reset", lang_of(msg.from_user.language_code)))

    async def cmd_stop(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is None or msg.from_user is None:
            return
        conv = conversation(msg, msg.from_user.id, self.s.group_scope)
        had = bool(self.deliveries.in_flight(conv))
        stopped = await self.deliveries.stop_conversation(conv)
        if stopped is None and not had:
            await self.reply(msg, t("nothing_to_stop", lang_of(msg.from_user.language_code)))
        else:
            log.info("job %s: stopped by user %s in chat %s", stopped, msg.from_user.id,
                     msg.chat.id)

    async def cmd_retry(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is None or msg.from_user is None:
            return
        conv = conversation(msg, msg.from_user.id, self.s.group_scope)
        if self.deliveries.in_flight(conv) or await self.client.active_job(conv):
            await self.reply(msg, t("retry_busy", lang_of(msg.from_user.language_code)))
            return
        await self.ask(msg, msg.from_user, "", kind="retry")

    async def cmd_forget(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is None or msg.from_user is None:
            return  # everyone may erase their data, allowlisted or not
        lang, uid = lang_of(msg.from_user.language_code), msg.from_user.id
        keyboard = InlineKeyboardMarkup([[
            InlineKeyboardButton(t("forget_yes", lang), callback_data=f"forget:yes:{uid}"),
            InlineKeyboardButton(t("forget_no", lang), callback_data=f"forget:no:{uid}"),
        ]])
        await self.reply(msg, t("forget_confirm", lang), keyboard)

    async def forget_answer(self, update: Update, ctx: Ctx) -> None:
        query = update.callback_query
        if query is None or not query.data or query.from_user is None:
            return
        _, choice, uid = [*query.data.split(":"), "", ""][:3]
        lang = lang_of(query.from_user.language_code)
        if str(query.from_user.id) != uid:
            await query.answer(t("forget_not_yours", lang), show_alert=True)
            return
        if choice == "yes":
            turns = await self.client.forget(PLATFORM, uid)
            text = t("forgot", lang, turns=turns)
            log.info("user %s: forgot %d stored turn(s)", uid, turns)
        else:
            text = t("forget_cancelled", lang)
        await query.answer()
        message = query.message
        if isinstance(message, Message):
            await self.edit(message, text)

    # -- sending ---------------------------------------------------------------------------

    async def reply(
        self, msg: Message, text: str, markup: InlineKeyboardMarkup | None = None
    ) -> SendResult:
        """Answer a message (threaded to it) through the outbox."""
        return await self.outbox.run(self._reply_op(msg, text, markup))

    @staticmethod
    def _reply_op(msg: Message, text: str, markup: InlineKeyboardMarkup | None = None) -> OutboxOp:
        chat_id, thread = msg.chat.id, thread_of(msg)
        reply = ReplyParameters(msg.message_id, allow_sending_without_reply=True)

        async def call(bot: Bot) -> object:
            return await bot.send_message(chat_id, text, message_thread_id=thread,
                                          reply_parameters=reply, reply_markup=markup)

        return OutboxOp(chat_id, call, "sendMessage", must=True, priority=0)

    async def edit(self, msg: Message, text: str) -> SendResult:
        chat_id, mid = msg.chat.id, msg.message_id

        async def call(bot: Bot) -> object:
            return await bot.edit_message_text(text, chat_id=chat_id, message_id=mid)

        return await self.outbox.run(
            OutboxOp(chat_id, call, "editMessageText", key=f"m{mid}", fingerprint=(text, ()),
                     must=True, priority=0)
        )

    async def unknown_button(self, update: Update, ctx: Ctx) -> None:
        """Callback data that is none of ours (an old keyboard, a forged press)."""
        query = update.callback_query
        if query is None:
            return
        log.warning("callback from user %s: unknown data %r; ignored",
                    query.from_user.id if query.from_user else "?", (query.data or "")[:64])
        await self.hd.desk.toast(query, "")

    async def on_error(self, update: object, ctx: Ctx) -> None:
        uid = update.update_id if isinstance(update, Update) else None
        log.error("update %s: handler failed", uid, exc_info=ctx.error)
        if isinstance(update, Update) and update.message is not None:
            user = update.message.from_user
            try:
                await self.reply(update.message,
                                 t("error.internal", user.language_code if user else None))
            except Exception:
                log.exception("update %s: could not apologise", uid)
        elif isinstance(update, Update) and update.callback_query is not None:
            query = update.callback_query  # a press still spinning: stop it with the apology
            await self.hd.desk.toast(query, t("error.internal", query.from_user.language_code))


def _bot_id(settings: Settings) -> int:
    """The bot's id, known before `getMe`: a token starts with it."""
    head = settings.telegram.token.get_secret_value().split(":", 1)[0]
    return int(head) if head.isdigit() else 0
