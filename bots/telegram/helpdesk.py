"""The helpdesk's PTB handlers and the two questions `Handlers` asks it about every message:
does the bot answer it (`answers`: the chat's mode and an open escalation, via
`Helpdesk.should_answer`), and what does it reply to (`context`: the reply chain as `Quoted`).

Commands: `/human [TEXT]`, `/resolve`, `/skip` (no 👎 comment), `/usage [tg:ID]`; admins:
`/stats`, `/mode …`, `/quota tg:ID N|default`. Buttons: `hd:*` callback data
(`kullm_core.helpdesk.actions`); anything else that is not `forget:` is logged and answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from telegram import Message, Update
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes, filters

from bots.telegram.admin import Admin
from bots.telegram.context import SeenMessages
from bots.telegram.desk import Desk
from bots.telegram.outbox import Outbox
from bots.telegram.routing import command_args, conversation, is_private, user_ref
from kullm_core.client import CoreClient
from kullm_core.helpdesk.channels import Seen
from kullm_core.settings import Settings
from kullm_core.wire import ConversationRef, Quoted

log = logging.getLogger(__name__)

Ctx = ContextTypes.DEFAULT_TYPE
COMMANDS = ("human", "resolve", "skip", "usage", "stats", "mode", "quota")


class HelpdeskHandlers:
    def __init__(self, settings: Settings, client: CoreClient, outbox: Outbox,
                 bot_id: int) -> None:
        self.scope = settings.telegram.group_scope
        self.client = client
        self.desk = Desk(client, outbox, settings.history.retention_hours * 3600)
        self.admin = Admin(client, self.desk.hd.modes, self.desk.hd)
        self.seen = SeenMessages(client.redis, client.keys.adapter("tg"), bot_id)
        client.on_forget(self.seen.forget)

    def install(self, app: Application) -> None:  # type: ignore[type-arg]
        new = filters.UpdateType.MESSAGE
        callbacks: dict[str, Callable[[Update, Ctx], Coroutine[Any, Any, None]]] = {
            "human": self.cmd_human, "resolve": self.cmd_resolve, "skip": self.cmd_skip,
            "usage": self.cmd_usage, "stats": self.cmd_stats, "mode": self.cmd_mode,
            "quota": self.cmd_quota,
        }
        for name, callback in callbacks.items():
            app.add_handler(CommandHandler(name, callback, filters=new))
        app.add_handler(CallbackQueryHandler(self.on_button, pattern=r"^hd:"))

    def conversation(self, msg: Message) -> ConversationRef:
        uid = msg.from_user.id if msg.from_user else 0
        return conversation(msg, uid, self.scope)

    # -- every message ---------------------------------------------------------------------

    async def answers(self, msg: Message, seen: Seen) -> bool:
        """Whether the bot answers `msg` (its chat's mode, an open escalation). Every group
        message is also kept for reply chains, and a reply to a hand-off or to another
        person times the first human reply of that escalation; a reply to a hand-off is
        never answered (it is the bot's message, but people talk there)."""
        user = msg.from_user
        if user is None:
            return False
        if not is_private(msg):
            await self.seen.remember(msg)
            if await self.desk.note_reply(msg, user_ref(user), self.conversation):
                return False
        return await self.desk.hd.should_answer(self.conversation(msg), user_ref(user), seen)

    async def context(self, msg: Message, conv: ConversationRef) -> list[Quoted]:
        """The reply chain of a group question ([] outside groups or without a reply)."""
        if is_private(msg) or msg.reply_to_message is None:
            return []
        answered = {turn.job_id for turn in await self.client.history(conv)}
        return await self.seen.quoted(msg, answered)

    # -- buttons and commands --------------------------------------------------------------

    async def on_button(self, update: Update, ctx: Ctx) -> None:
        if update.callback_query is not None:
            await self.desk.on_button(update.callback_query)

    @staticmethod
    def _args(msg: Message) -> list[str]:
        return command_args(msg).split()

    async def cmd_human(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is not None and msg.from_user is not None:
            await self.desk.cmd_human(msg, self.conversation(msg), command_args(msg))

    async def cmd_resolve(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is not None and msg.from_user is not None:
            await self.desk.cmd_resolve(msg, self.conversation(msg))

    async def cmd_skip(self, update: Update, ctx: Ctx) -> None:
        if update.message is not None:
            await self.desk.skip(update.message)

    async def cmd_usage(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is not None and msg.from_user is not None:
            who = user_ref(msg.from_user)
            await self.desk.reply(msg, await self.admin.usage(who, self._args(msg)))

    async def cmd_quota(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is not None and msg.from_user is not None:
            who = user_ref(msg.from_user)
            await self.desk.reply(msg, await self.admin.quota(who, self._args(msg)))

    async def cmd_stats(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is not None and msg.from_user is not None:
            text, entities = await self.admin.stats(user_ref(msg.from_user))
            await self.desk.send(msg.chat.id, text, reply_to=msg.message_id,
                                 thread=msg.message_thread_id if msg.is_topic_message else None,
                                 entities=entities)

    async def cmd_mode(self, update: Update, ctx: Ctx) -> None:
        msg = update.message
        if msg is None or msg.from_user is None:
            return
        chat = ConversationRef(platform="telegram", chat=str(msg.chat.id),
                               direct=is_private(msg))
        text = await self.admin.mode(user_ref(msg.from_user), chat, self._args(msg))
        await self.desk.reply(msg, text)
