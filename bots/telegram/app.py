"""The Telegram bot process: PTB application, outbox, reply deliveries; polling or webhook."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from telegram import BotCommand, Update
from telegram.error import TelegramError
from telegram.ext import Application, ApplicationBuilder, BaseUpdateProcessor

from bots.telegram.handlers import Handlers
from bots.telegram.outbox import Outbox
from bots.telegram.sink import TelegramPlatform
from bots.telegram.texts import COMMANDS, t
from bots.telegram.tuning import Tuning
from kullm_core.budget import SendBudget
from kullm_core.client import CoreClient
from kullm_core.errors import ConfigError
from kullm_core.replies import Deliveries
from kullm_core.scopes import TelegramScopes
from kullm_core.settings import Settings

log = logging.getLogger(__name__)

ALLOWED_UPDATES = [Update.MESSAGE, Update.EDITED_MESSAGE, Update.CALLBACK_QUERY]


CHAT_BACKLOG = 64
"""Updates of one chat held while an earlier one of that chat is processed; a flood beyond
this is dropped (counted in the log), so one chat's backlog stays bounded."""
_PTB_UNBOUNDED = 1 << 30


@dataclass
class _Chat:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    held: int = 0
    """Updates of this chat running or waiting for `lock`."""
    dropped: int = 0


class ChatOrderedProcessor(BaseUpdateProcessor):
    """Updates of different chats run concurrently; those of one chat run in order.

    A processing slot is taken only once the chat's turn has come: an update waiting behind
    an earlier one of its chat holds no slot, so one flooding chat can use at most one slot
    and never stalls the others. PTB's own semaphore (taken before `do_process_update`)
    would be held while waiting, so it is left unbounded and the slots are ours.
    """

    def __init__(self, max_concurrent_updates: int, backlog: int = CHAT_BACKLOG) -> None:
        super().__init__(_PTB_UNBOUNDED)
        self.slots = max_concurrent_updates
        self.backlog = backlog
        self._slots = asyncio.Semaphore(max_concurrent_updates)
        self._chats: dict[int, _Chat] = {}
        self.dropped = 0

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        chat = update.effective_chat if isinstance(update, Update) else None
        if chat is None:
            async with self._slots:
                await coroutine
            return
        state = self._chats.setdefault(chat.id, _Chat())
        if state.held >= self.backlog:
            if inspect.iscoroutine(coroutine):
                coroutine.close()  # never run: PTB's processing of this update
            self.dropped += 1
            if not state.dropped:
                log.warning("chat %s: more than %d updates waiting; dropping the excess",
                            chat.id, self.backlog)
            state.dropped += 1
            return
        state.held += 1
        try:
            async with state.lock, self._slots:
                await coroutine
        finally:
            state.held -= 1
            if state.held == 0 and self._chats.get(chat.id) is state:
                del self._chats[chat.id]
                if state.dropped:
                    log.warning("chat %s: %d update(s) dropped in a flood", chat.id,
                                state.dropped)

    def waiting(self, chat_id: int) -> int:
        """Updates of a chat running or waiting (0 when none)."""
        state = self._chats.get(chat_id)
        return state.held if state else 0

    async def initialize(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None


def _token(settings: Settings) -> str:
    token = settings.telegram.token.get_secret_value()
    if not token:
        raise ConfigError(
            "setting `telegram.token` is empty: set TELEGRAM_BOT_TOKEN or telegram.token"
        )
    return token


class TelegramBot:
    """Runs the adapter: `async with TelegramBot(settings, client): ...`."""

    def __init__(
        self,
        settings: Settings,
        client: CoreClient,
        *,
        scopes: TelegramScopes | None = None,
        tuning: Tuning | None = None,
    ) -> None:
        s = settings.telegram
        if s.mode == "webhook" and not s.webhook_url:
            raise ConfigError("setting `telegram.webhook_url` is required in webhook mode")
        if s.mode == "webhook" and not s.webhook_secret.get_secret_value():
            raise ConfigError("setting `telegram.webhook_secret` is required in webhook mode")
        self.settings = settings
        self.client = client
        self.scopes = scopes or TelegramScopes.from_settings(s)
        self.tuning = tuning or Tuning.from_settings(settings)
        self.processor = ChatOrderedProcessor(256)
        self.app: Application = (  # type: ignore[type-arg]
            ApplicationBuilder()
            .token(_token(settings))
            .base_url(s.base_url)
            .base_file_url(s.base_file_url)
            .concurrent_updates(self.processor)
            .connection_pool_size(128)
            .pool_timeout(30.0)
            .get_updates_read_timeout(self.tuning.poll_timeout_s + 10)
            .build()
        )
        bot = self.app.bot
        bot_id = _token(settings).split(":", 1)[0]  # a token starts with the bot's id
        budget = SendBudget(client.redis, client.keys, f"tg:{bot_id}")
        self.outbox = Outbox(bot, budget, self.scopes)
        self.platform = TelegramPlatform(self.outbox, use_drafts=s.use_drafts,
                                         typing_every_s=self.tuning.typing_every_s)
        delivery = dataclasses.replace(  # a user setting, whatever the timings
            self.tuning.delivery, refusal_interval_s=settings.limits.refusal_interval_s)
        self.deliveries = Deliveries(client, self.platform, delivery)
        self.handlers = Handlers(settings, client, self.deliveries, self.outbox, bot)
        self.handlers.install(self.app)

    async def __aenter__(self) -> TelegramBot:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.app.initialize()  # getMe: fails fast on a wrong token or base URL
        log.info("telegram: bot @%s (%s), %s mode", self.app.bot.username, self.app.bot.id,
                 self.settings.telegram.mode)
        await self._set_commands()
        await self.deliveries.__aenter__()
        await self.app.start()
        updater = self.app.updater
        if updater is None:  # ApplicationBuilder always builds one
            raise RuntimeError("the PTB application has no updater")
        s = self.settings.telegram
        if s.mode == "polling":
            await updater.start_polling(
                timeout=timedelta(seconds=self.tuning.poll_timeout_s),
                allowed_updates=ALLOWED_UPDATES, drop_pending_updates=False,
                error_callback=self._poll_error,
            )
        else:
            await updater.start_webhook(
                listen=s.webhook_listen, port=s.webhook_port,
                url_path=urlsplit(s.webhook_url).path.lstrip("/"), webhook_url=s.webhook_url,
                allowed_updates=ALLOWED_UPDATES, drop_pending_updates=False,
                secret_token=s.webhook_secret.get_secret_value(),
            )

    @staticmethod
    def _poll_error(exc: TelegramError) -> None:
        log.warning("telegram: getUpdates failed (%s); retrying", exc)

    async def _set_commands(self) -> None:
        """Register the command menu in Korean (default) and English."""
        for lang in ("ko", "en"):
            commands = [BotCommand(c, t(f"cmd.{c}", lang)) for c in COMMANDS]
            try:
                await self.app.bot.set_my_commands(
                    commands, language_code=None if lang == "ko" else lang
                )
            except TelegramError as exc:
                log.warning("telegram: setMyCommands (%s) failed: %s", lang, exc)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking updates, let replies finish (grace), hand the rest back, close."""
        grace = self.tuning.shutdown_grace_s if grace_s is None else grace_s
        updater = self.app.updater
        if updater is not None and updater.running:
            await updater.stop()
        if self.app.running:
            await self.app.stop()
        await self.deliveries.stop(grace)
        await self.outbox.stop(drain_s=min(grace, 5.0))
        await self.app.shutdown()
        log.info("telegram: stopped")
