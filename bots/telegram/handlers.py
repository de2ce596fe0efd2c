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

from bots.telegram.deliveries import Deliveries
from bots.telegram.delivery import Env
from bots.telegram.outbox import Op, Outcome
from bots.telegram.routing import (
    PLATFORM,
    addressed_text,
    command_args,
    conversation,
    is_private,
    source_id,
    thread_of,
    user_ref,
)
from bots.telegram.state import DeliveryRecord, Submit
from bots.telegram.texts import t
from kullm_core import logctx, metrics
from kullm_core.settings import Settings
from kullm_core.text_clean import clean_text
from kullm_core.texts import lang_of
from kullm_core.wire import ErrorEvent, Job

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

    def __init__(self, settings: Settings, env: Env, deliveries: Deliveries, bot: Bot) -> None:
        self.s = settings.telegram
        self.limits = settings.limits
        self._refused_until: dict[tuple[int, int], float] = {}
        self.dropped_while_limited = 0
        self.env = env
        self.client = env.client
        self.deliveries = deliveries
        self.bot = bot
        self.client.on_forget(self._forget_records)

    async def _forget_records(self, platform: str, user_id: str) -> None:
        if platform == PLATFORM and user_id.isdigit():
            await self.env.registry.forget_user(int(user_id))

    def install(self, app: Application) -> None:  # type: ignore[type-arg]
        app.add_handler(TypeHandler(Update, self.gate), group=-1)
        commands = {
            "start": self.cmd_start, "help": self.cmd_help, "ask": self.cmd_ask,
            "reset": self.cmd_reset, "stop": self.cmd_stop, "retry": self.cmd_retry,
            "forget": self.cmd_forget,
        }
        for name, callback in commands.items():
            app.add_handler(CommandHandler(name, callback, filters=NEW))
        app.add_handler(CallbackQueryHandler(self.forget_answer, pattern=r"^forget:"))
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
        query = update.callback_query
        if query is not None:
            return (query.data or "").startswith("forget:")
        msg = update.message
        return msg is not None and (msg.text or "").split("@", 1)[0].split(" ", 1)[0] == "/forget"

    def _speaks_to_me(self, msg: Message) -> bool:
        """Private, a command, or a group message that mentions or answers the bot."""
        return is_private(msg) or (msg.text or "").startswith("/") or (
            addressed_text(msg, self.bot.id, self.bot.username) is not None
        )

    def refuse(self, msg: Message, text: str, kind: str = "") -> None:
        """A refusal or hint, at most one per chat (and `kind`) per refusal interval; the
        rest are dropped (counted in the log). Not awaited: the chat's next update need not
        wait for the send."""
        place = f"tg:{msg.chat.id}" + (f":{kind}" if kind else "")
        if self.env.refusals.allow(place):
            self.env.outbox.submit(self._reply_op(msg, text))

    # -- questions -------------------------------------------------------------------------

    async def on_text(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is None or msg.from_user is None:
            return
        if is_private(msg):
            await self.ask(msg, msg.from_user, msg.text or "")
            return
        question = addressed_text(msg, self.bot.id, self.bot.username)
        if question is not None:
            await self.ask(msg, msg.from_user, question)

    async def cmd_ask(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is not None and msg.from_user is not None:
            await self.ask(msg, msg.from_user, command_args(msg), usage="ask_usage")

    async def on_non_text(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is None or msg.from_user is None:
            return
        if is_private(msg) or addressed_text(msg, self.bot.id, self.bot.username) is not None:
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
        pending = self._pending(msg.chat.id, user.id)
        if cap and pending >= cap and not self.client.limiter.is_admin(uref):
            self.refuse(msg, t("too_many_pending", uref.lang, pending=pending))
            return
        conv = conversation(msg, user.id, self.s.group_scope)
        src = source_id(msg, self.bot.id)
        thread = thread_of(msg)
        meta = {"chat_id": str(msg.chat.id), "reply_to": str(msg.message_id),
                "thread_id": str(thread or "")}
        job_id = Job.id_for(src)
        logctx.bind(job_id=job_id, conversation=conv.key)
        drafts = is_private(msg) and self.s.use_drafts and (
            msg.chat.id not in self.env.drafts_refused
        )
        rec = DeliveryRecord(
            job_id=job_id, chat_id=msg.chat.id, thread_id=thread, reply_to=msg.message_id,
            user_id=user.id, lang=uref.lang, conv_key=conv.key,
            mode="draft" if drafts else "edit", draft_id=int(job_id[:7], 16) + 1,
            submit=Submit(kind=kind, conv=conv, user=uref, text=question, source_id=src,
                          meta=meta),
        )
        task = await self.deliveries.begin(rec)
        if task is None:
            log.info("job %s: already being delivered; ignored", job_id)
            return
        task.start_typing()
        result = await task.submit_once()
        if result == "refused":
            self._remember_refusal(msg.chat.id, user.id, task.refusal)
            await self.deliveries.drop(task)
            return
        others = [x for x in self.deliveries.for_conversation(conv.key) if x.job_id != job_id]
        active = await self.client.active_job(conv)
        task.behind = bool(others) or active not in (None, job_id)
        log.info("job %s: chat %s user %s (%s%s)", job_id, msg.chat.id, user.id, result,
                 ", behind another reply" if task.behind else "")
        self.deliveries.spawn(task)

    def _remember_refusal(self, chat_id: int, user_id: int, err: ErrorEvent | None) -> None:
        """A user told to wait (rate limit, quota) is not asked about again until then: their
        questions meanwhile are dropped before any Redis work (the refusal said when)."""
        wait = err.params.get("retry_after") if err is not None else None
        if err is None or err.kind not in ("rate_limited", "quota") or not isinstance(wait, int):
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

    def _pending(self, chat_id: int, user_id: int) -> int:
        """This user's questions in this chat not answered yet (waiting or being written)."""
        return sum(1 for x in self.deliveries.tasks.values()
                   if x.rec.chat_id == chat_id and x.rec.user_id == user_id and not x.answered)

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
        text = t("help", lang) + "\n\n" + t("help_group", lang, bot=self.bot.username)
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
        stopped = await self.client.cancel(conv)
        # A reply still waiting in line has no active job yet: cancel it by id.
        for task in self.deliveries.for_conversation(conv.key):
            if task.job_id != stopped and not task.started:
                await self.client.cancel_job(task.job_id)
                stopped = stopped or task.job_id
        if stopped is None:
            await self.reply(msg, t("nothing_to_stop", lang_of(msg.from_user.language_code)))
        else:
            log.info("job %s: stopped by user %s in chat %s", stopped, msg.from_user.id,
                     msg.chat.id)

    async def cmd_retry(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is None or msg.from_user is None:
            return
        conv = conversation(msg, msg.from_user.id, self.s.group_scope)
        if self.deliveries.for_conversation(conv.key) or await self.client.active_job(conv):
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
    ) -> Outcome:
        """Answer a message (threaded to it) through the outbox."""
        return await self.env.outbox.run(self._reply_op(msg, text, markup))

    @staticmethod
    def _reply_op(msg: Message, text: str, markup: InlineKeyboardMarkup | None = None) -> Op:
        chat_id, thread = msg.chat.id, thread_of(msg)
        reply = ReplyParameters(msg.message_id, allow_sending_without_reply=True)

        async def call(bot: Bot) -> object:
            return await bot.send_message(chat_id, text, message_thread_id=thread,
                                          reply_parameters=reply, reply_markup=markup)

        return Op(chat_id, call, "sendMessage", must=True, priority=0)

    async def edit(self, msg: Message, text: str) -> Outcome:
        chat_id, mid = msg.chat.id, msg.message_id

        async def call(bot: Bot) -> object:
            return await bot.edit_message_text(text, chat_id=chat_id, message_id=mid)

        return await self.env.outbox.run(
            Op(chat_id, call, "editMessageText", key=f"m{mid}", fingerprint=(text, ()), must=True,
               priority=0)
        )

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

