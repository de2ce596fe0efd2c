"""The helpdesk in Telegram: the answer buttons pressed, the 👎 comment as the next message,
hand-offs to a person, and `/human`, `/resolve`, `/skip`.

A press is answered with a toast (`answerCallbackQuery`); what everyone in the chat should
see (that a person was called, that it was resolved) is posted there. The hand-off goes to
the channel's helpdesk group / forum topic (`handoff_chat` / `handoff_thread`), else into the
chat itself, with a "✅ 해결됨 / Resolved" button that only responders and admins may press. A
button on an answer that was forgotten or expired gets `hd.gone`; data that is not ours is
logged and answered empty. Nothing here ever asks the model for an answer.

Own keys (under `{redis.prefix}:tg:hd:`), no message text in any of them:

| key                         | what                                             | TTL         |
|-----------------------------|--------------------------------------------------|-------------|
| comment:{chat}:{user}       | the job whose 👎 awaits the user's next message | 15 minutes  |
| hmsg:{chat}:{message}       | the escalation a hand-off message belongs to     | retention   |
| open:{chat}                 | the chat's latest escalation (`/resolve`)        | retention   |

Retention is `history.retention_hours`, as the escalation itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from telegram import (
    Bot,
    CallbackQuery,
    Chat,
    ForceReply,
    InlineKeyboardMarkup,
    Message,
    MessageEntity,
    ReplyParameters,
)
from telegram import User as TgUser
from telegram.error import TelegramError

from bots.telegram.handoff import (
    handoff_entities,
    message_link,
    responder_labels,
    tagged,
    utf16_len,
)
from bots.telegram.keyboard import inline_keyboard
from bots.telegram.outbox import Outbox, OutboxOp, SendResult
from bots.telegram.routing import is_private, thread_of, user_ref
from bots.telegram.texts import t
from kullm_core.client import CoreClient
from kullm_core.helpdesk.actions import parse_action, resolve_action
from kullm_core.helpdesk.service import Helpdesk
from kullm_core.redis_text import as_str
from kullm_core.wire import ConversationRef, Escalation, UserRef

log = logging.getLogger(__name__)

COMMENT_TTL_S = 15 * 60


def display_name(user: TgUser) -> str:
    return user.full_name + (f" (@{user.username})" if user.username else "")


def send_op(chat_id: int, text: str, *, thread: int | None = None, reply_to: int | None = None,
            markup: InlineKeyboardMarkup | ForceReply | None = None,
            entities: list[MessageEntity] | None = None) -> OutboxOp:
    reply = ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None

    async def call(bot: Bot) -> object:
        return await bot.send_message(chat_id, text, message_thread_id=thread,
                                      reply_parameters=reply, reply_markup=markup,
                                      entities=entities or None)

    return OutboxOp(chat_id, call, "sendMessage", must=True, priority=0)


class Desk:
    def __init__(self, client: CoreClient, outbox: Outbox, retention_s: float) -> None:
        self.client = client
        self.hd = Helpdesk(client)
        self.outbox = outbox
        self.r = client.redis
        self.p = f"{client.keys.adapter('tg')}:hd"
        self.retention_s = int(retention_s)

    async def send(self, chat_id: int, text: str, **kw: object) -> SendResult:
        return await self.outbox.run(send_op(chat_id, text, **kw))  # type: ignore[arg-type]

    async def reply(self, msg: Message, text: str) -> SendResult:
        return await self.send(msg.chat.id, text, thread=thread_of(msg), reply_to=msg.message_id)

    # -- buttons ---------------------------------------------------------------------------

    async def on_button(self, query: CallbackQuery) -> None:
        data, user = query.data or "", query.from_user
        parsed = parse_action(data)
        if parsed is None:
            log.warning("callback from user %s: unknown data %r; ignored", user.id, data[:64])
            await self.toast(query, "")
            return
        kind, ref = parsed
        who = user_ref(user)
        msg = query.message
        log.info("helpdesk %s pressed by user %s in chat %s", kind, user.id,
                 msg.chat.id if msg else "?")
        if kind in ("up", "down"):
            rated = await self.hd.rate(ref, who, "", kind)  # type: ignore[arg-type]
            await self.toast(query, rated.text)
            if rated.ask_comment and msg is not None:
                await self.ask_comment(msg.chat.id, msg.message_id, user, ref,
                                       private=msg.chat.type == "private")
        elif kind == "human":
            ex = await self.hd.store.exchange(ref)
            if ex is None or msg is None:
                await self.toast(query, t("hd.gone", who.lang))
                return
            text = await self.escalate(ex.conversation, user, msg.chat, msg.message_id,
                                       job_id=ref)
            await self.toast(query, text)
            await self.send(msg.chat.id, text, reply_to=msg.message_id,
                            thread=int(ex.conversation.thread or 0) or None)
        else:
            _, text = await self.resolve(ref, user)
            await self.toast(query, text)

    @staticmethod
    async def toast(query: CallbackQuery, text: str) -> None:
        try:
            await query.answer(text[:200] or None)
        except TelegramError as exc:  # the query expired (pressed long ago, or a restart)
            log.info("callback %s: could not answer (%s)", query.id, exc)

    # -- 👎 comment: the presser's next message in that chat ----------------------------

    def _comment_key(self, chat_id: int, user_id: int) -> str:
        return f"{self.p}:comment:{chat_id}:{user_id}"

    async def ask_comment(self, chat_id: int, answer_id: int, user: TgUser, job_id: str,
                          private: bool) -> None:
        await self.r.set(self._comment_key(chat_id, user.id), job_id, ex=COMMENT_TTL_S)
        lang = user_ref(user).lang
        prompt = t("hd.comment_prompt", lang)
        if private:
            await self.send(chat_id, prompt)
            return
        # In a group the bot (privacy mode on) sees only replies to it: a selective force
        # reply opens the reply for the presser alone, named at the start.
        name = user.full_name
        mention = MessageEntity(MessageEntity.TEXT_MENTION, 0, utf16_len(name), user=user)
        await self.send(chat_id, f"{name}, {prompt}", reply_to=answer_id, entities=[mention],
                        markup=ForceReply(selective=True))

    async def take_comment(self, msg: Message) -> bool:
        """When the sender owes a comment in this chat, `msg` is it: saved, confirmed, not
        asked to the model. False when no comment is awaited."""
        user = msg.from_user
        if user is None:
            return False
        job = as_str(await self.r.getdel(self._comment_key(msg.chat.id, user.id)))
        if not job:
            return False
        text = await self.hd.comment(job, user_ref(user), "", msg.text or "")
        log.info("job %s: comment from user %s", job, user.id)
        await self.reply(msg, text)
        return True

    async def skip(self, msg: Message) -> None:
        user = msg.from_user
        if user is not None and await self.r.delete(self._comment_key(msg.chat.id, user.id)):
            await self.reply(msg, t("hd.comment_skipped", user_ref(user).lang))

    # -- escalation ------------------------------------------------------------------------

    async def escalate(self, conv: ConversationRef, user: TgUser, chat: Chat, at: int, *,
                       job_id: str = "", question: str = "") -> str:
        """Hand `conv` to a person: the hand-off into the helpdesk group (or this chat),
        tagging the responders. `chat`/`at`: the message the link points to. Returns what
        the asker is told."""
        who = user_ref(user)
        open_now = await self.hd.store.escalation(conv)
        if open_now is not None and open_now.state == "open":
            return t("hd.already_open", who.lang)
        thread = int(conv.thread) if conv.thread else None
        link = message_link(chat, at, thread)
        asker = who.model_copy(update={"name": display_name(user)})
        got = await self.hd.escalate(conv, asker, job_id=job_id, link=link, question=question)
        if isinstance(got, str):
            return got
        if not got.opened:
            return t("hd.already_open", who.lang)
        esc, cfg = got.escalation, got.config
        target, topic = _handoff_target(cfg.handoff_chat, cfg.handoff_thread)
        origin = int(conv.chat)
        text, entities = self._handoff(esc, who.lang, cfg.responders)
        markup = inline_keyboard([resolve_action(esc.id, who.lang)])
        sent = None
        if target is not None and target != origin:
            sent = await self.send(target, text, thread=topic, entities=entities, markup=markup)
            if not sent.ok:
                log.warning("escalation %s: hand-off to chat %s failed (%s); posting in the "
                            "chat itself", esc.id, target, sent.error)
        if target is None or sent is None or not sent.ok:
            target = origin
            sent = await self.send(origin, text, thread=thread, reply_to=at, entities=entities,
                                   markup=markup)
        await self._remember_handoff(esc, who.lang, origin, target, sent)
        return t("hd.called_answering" if cfg.answer_when_escalated else "hd.called", who.lang)

    def _handoff(self, esc: Escalation, lang: str,
                 responders: list[str]) -> tuple[str, list[MessageEntity]]:
        mentions, at_zero = tagged("", responder_labels(responders, t("hd_responder", lang)))
        text = self.hd.handoff_text(esc, lang, mentions)
        return text, handoff_entities(text, mentions, at_zero, esc.asker_name)

    async def _remember_handoff(self, esc: Escalation, lang: str, origin: int, target: int,
                                sent: SendResult) -> None:
        ttl = self.retention_s
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.set(f"{self.p}:open:{origin}", esc.id, ex=ttl)
            if sent.ok and sent.value is not None:
                mid = int(sent.value.message_id)
                pipe.set(f"{self.p}:hmsg:{target}:{mid}", esc.id, ex=ttl)
                pipe.set(f"{self.p}:open:{target}", esc.id, ex=ttl)
            await pipe.execute()
        if sent.ok and sent.value is not None:
            await self.hd.store.set_shown(esc.id, {"chat": target, "lang": lang,
                                                   "id": int(sent.value.message_id)})
        log.info("escalation %s: hand-off in chat %s (from chat %s)", esc.id, target, origin)

    async def escalation_of_message(self, chat_id: int, message_id: int) -> Escalation | None:
        """The escalation a hand-off message belongs to (None for any other message)."""
        esc_id = as_str(await self.r.get(f"{self.p}:hmsg:{chat_id}:{message_id}"))
        return await self.hd.store.escalation_by_id(esc_id) if esc_id else None

    async def resolve(self, escalation_id: str, user: TgUser) -> tuple[bool, str]:
        """Close an escalation (responders and admins)."""
        names = frozenset({user.username, f"@{user.username}"}) if user.username else frozenset()
        return await self.hd.close(escalation_id, user_ref(user), "", self, names)

    # -- HandoffView -----------------------------------------------------------------------

    async def tell(self, esc: Escalation, text: str) -> None:
        conv = esc.conversation
        await self.send(int(conv.chat), text, thread=int(conv.thread) if conv.thread else None)

    async def show_resolved(self, esc: Escalation, text: str) -> None:
        where = esc.shown
        if not where.get("id"):
            return
        cfg = await self.hd.modes.get(esc.channel)
        body, entities = self._handoff(esc, str(where.get("lang") or "ko"), cfg.responders)
        body += "\n" + text
        chat, mid = int(where["chat"]), int(where["id"])

        async def call(bot: Bot) -> object:  # no reply_markup: the button goes
            return await bot.edit_message_text(body, chat_id=chat, message_id=mid,
                                               entities=entities or None)

        await self.outbox.run(OutboxOp(chat, call, "editMessageText", key=f"m{mid}",
                                       must=True, priority=1))

    async def open_here(self, msg: Message, conv: ConversationRef) -> Escalation | None:
        """What `/resolve` in `msg`'s chat closes: the hand-off it replies to, else the
        sender's own open escalation, else the chat's latest one."""
        parent = msg.reply_to_message
        candidates: list[Escalation | None] = []
        if parent is not None:
            candidates.append(await self.escalation_of_message(msg.chat.id, parent.message_id))
        candidates.append(await self.hd.store.escalation(conv))
        latest = as_str(await self.r.get(f"{self.p}:open:{msg.chat.id}"))
        if latest:
            candidates.append(await self.hd.store.escalation_by_id(latest))
        return next((e for e in candidates if e is not None and e.state == "open"), None)

    # -- commands --------------------------------------------------------------------------

    async def cmd_human(self, msg: Message, conv: ConversationRef, question: str) -> None:
        user = msg.from_user
        if user is None:
            return
        at = msg.reply_to_message.message_id if msg.reply_to_message and not is_private(
            msg) else msg.message_id
        await self.reply(msg, await self.escalate(conv, user, msg.chat, at, question=question))

    async def cmd_resolve(self, msg: Message, conv: ConversationRef) -> None:
        user = msg.from_user
        if user is None:
            return
        esc = await self.open_here(msg, conv)
        if esc is None:
            await self.reply(msg, t("hd.nothing_open", user_ref(user).lang))
            return
        done, text = await self.resolve(esc.id, user)
        if not done or int(esc.conversation.chat) != msg.chat.id:
            await self.reply(msg, text)

    async def note_reply(self, msg: Message, who: UserRef,
                         scope_of: Callable[[Message], ConversationRef]) -> bool:
        """A reply to a hand-off message or to another person's message: the first human
        reply of that escalation (the asker's conversation) is timed. True for a reply to a
        hand-off (people talking about it: not a question for the bot)."""
        parent = msg.reply_to_message
        if parent is None or parent.from_user is None or msg.from_user is None:
            return False
        esc = await self.escalation_of_message(msg.chat.id, parent.message_id)
        conv = esc.conversation if esc is not None else None
        if conv is None and not parent.from_user.is_bot and parent.from_user.id != who.id:
            conv = scope_of(parent)
        if conv is not None:
            await self.hd.store.note_message(conv, f"tg:{who.id}")
        return esc is not None


def _handoff_target(chat: str, thread: str) -> tuple[int | None, int | None]:
    """The configured helpdesk group and topic (`-100123` or `tg:-100123`)."""
    raw = chat.removeprefix("tg:")
    if not raw.lstrip("-").isdigit():
        if raw:
            log.warning("helpdesk handoff_chat %r is not a Telegram chat id; ignored", chat)
        return None, None
    return int(raw), int(thread) if thread.isdigit() else None

