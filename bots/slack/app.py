"""The Slack adapter assembled: Web API client, send budget and scheduler, the core's
`Deliveries` with the Slack sink, Bolt app, receiver."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from typing import Any

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_bolt.middleware.assistant.async_assistant import AsyncAssistant
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.commands import FORGET_NO, FORGET_YES, Commands
from bots.slack.config import SlackTuning
from bots.slack.desk import Desk
from bots.slack.handlers import Inbound
from bots.slack.helpdesk import ACTION_PATTERN, COMMENT_VIEW, HelpdeskWebClient
from bots.slack.receivers import HttpReceiver, Receiver, SocketModeReceiver
from bots.slack.reply import SlackShared
from bots.slack.scheduler import Scheduler, api_error
from bots.slack.sink import SlackPlatform
from bots.slack.store import SlackStore
from kullm_core.budget import SendBudget
from kullm_core.client import CoreClient
from kullm_core.errors import ConfigError
from kullm_core.replies import Deliveries, DeliveryTuning, owner_id
from kullm_core.scopes import SlackScopes
from kullm_core.settings import Settings

log = logging.getLogger(__name__)


def scopes_for(settings: Settings, tuning: SlackTuning) -> SlackScopes:
    """Slack's limits as the tuning sets them (tests run Slack's clock faster)."""
    return SlackScopes(updates_per_minute=tuning.update_limit(settings),
                       stream_calls_per_minute=tuning.stream_calls_per_minute,
                       posts_per_second_per_channel=tuning.post_rate(settings),
                       window_s=tuning.budget_window_s)


def delivery_tuning(settings: Settings, tuning: SlackTuning) -> DeliveryTuning:
    """The core's reply timings with Slack's lease. The waiting placeholder is a reaction
    (no message), so it is shown at once."""
    base = DeliveryTuning.from_settings(settings, grace_s=tuning.shutdown_grace_s)
    return dataclasses.replace(base, lease_s=tuning.lease_s, renew_every_s=tuning.lease_s / 3,
                               rescan_every_s=tuning.lease_s, placeholder_delay_s=0.0)


_BAD_TOKEN = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked",
                        "token_expired", "not_allowed_token_type"})


async def _until_stopped(start: Any, stop: asyncio.Event) -> bool:
    """Run `start` unless `stop` is set first (a Socket Mode connect retries forever)."""
    starting = asyncio.ensure_future(start)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not starting.done():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        return False
    starting.result()
    return True


def check_settings(settings: Settings) -> None:
    s = settings.slack
    if not s.bot_token.get_secret_value():
        raise ConfigError("setting `slack.bot_token` (SLACK_BOT_TOKEN) is required")
    if s.mode == "socket" and not s.app_token.get_secret_value():
        raise ConfigError("setting `slack.app_token` (SLACK_APP_TOKEN) is required in socket mode")
    if s.mode == "http" and not s.signing_secret.get_secret_value():
        raise ConfigError(
            "setting `slack.signing_secret` (SLACK_SIGNING_SECRET) is required in http mode")


class SlackBot:
    """KULLM3 in Slack. `run(stop)` serves until `stop` is set."""

    def __init__(self, settings: Settings, client: CoreClient,
                 tuning: SlackTuning | None = None) -> None:
        check_settings(settings)
        self.settings = settings
        self.client = client
        self.tuning = tuning or SlackTuning.from_settings(settings)
        self.owner = owner_id()
        self.ready = asyncio.Event()
        self.http_port: int | None = None
        self.scopes = scopes_for(settings, self.tuning)
        self.scheduler = Scheduler(SendBudget(client.redis, client.keys, "slack"), self.scopes)
        self.store = SlackStore(client.redis, settings.redis.prefix, self.tuning,
                                settings.history.retention_hours * 3600)
        self.deliveries: Deliveries | None = None
        self.receiver: Receiver | None = None

    def _web(self, session: aiohttp.ClientSession) -> AsyncWebClient:
        s = self.settings.slack
        base = s.base_url if s.base_url.endswith("/") else s.base_url + "/"
        return HelpdeskWebClient(
            token=s.bot_token.get_secret_value(), base_url=base, session=session,
            timeout=int(self.tuning.api_timeout_s), logger=logging.getLogger("bots.slack.sdk"),
            retry_handlers=[self.scheduler.rate_limit_handler(self.tuning.max_429_retries)],
        )

    def _app(self, web: AsyncWebClient, inbound: Inbound, commands: Commands,
             desk: Desk) -> AsyncApp:
        s = self.settings.slack
        app = AsyncApp(
            client=web,
            signing_secret=s.signing_secret.get_secret_value(),
            request_verification_enabled=s.mode == "http",
            logger=logging.getLogger("bots.slack.bolt"),
            name="kullm",
        )
        assistant = AsyncAssistant(logger=logging.getLogger("bots.slack.bolt"))
        assistant.thread_started(inbound.on_assistant_started)
        assistant.thread_context_changed(inbound.on_context_changed)
        assistant.user_message(inbound.on_assistant_message)
        app.use(assistant)
        app.event("app_mention")(inbound.on_mention)
        app.event("message")(inbound.on_message)
        app.command("/kullm")(commands.on_command)
        app.action(FORGET_YES)(commands.on_forget)
        app.action(FORGET_NO)(commands.on_forget_cancel)
        app.action(re.compile(ACTION_PATTERN))(desk.on_action)
        app.view(COMMENT_VIEW)(desk.on_comment)
        app.event("app_home_opened")(desk.on_home)

        @app.error
        async def _error(error: Exception, body: dict[str, Any]) -> None:
            log.error("slack listener failed (%s)", body.get("type", "?"), exc_info=error)

        return app

    def _receiver(self, app: AsyncApp, web: AsyncWebClient) -> Receiver:
        s = self.settings.slack
        if s.mode == "http":
            return HttpReceiver(app, self.tuning.http_host, s.http_port, self.tuning.http_path)
        return SocketModeReceiver(app, s.app_token.get_secret_value(), web,
                                  self.tuning.socket_ping_interval_s)

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session, self.scheduler:
            web = self._web(session)
            env = SlackShared(web, self.tuning, self.scheduler.wake, self.scopes)
            platform = SlackPlatform(env, self.scheduler,
                                     native=self.settings.slack.native_streaming)
            deliveries = self.deliveries = Deliveries(
                self.client, platform, delivery_tuning(self.settings, self.tuning),
                owner=self.owner)
            inbound = Inbound(self.settings, self.client, web, self.scheduler, self.store,
                              deliveries)
            desk = Desk(inbound, self.store)
            commands = Commands(self.client, self.store, deliveries, inbound, desk)
            receiver = self.receiver = self._receiver(
                self._app(web, inbound, commands, desk), web)
            await self._check_tokens(web)
            async with deliveries:
                if not await _until_stopped(receiver.start(), stop):
                    await deliveries.stop(0)
                    await receiver.stop()
                    return
                await self._serve(receiver, deliveries, stop)

    async def _serve(self, receiver: Receiver, deliveries: Deliveries,
                     stop: asyncio.Event) -> None:
        if isinstance(receiver, HttpReceiver):
            self.http_port = receiver.port
        log.info("slack: ready (%s mode, owner %s)", self.settings.slack.mode, self.owner)
        self.ready.set()
        try:
            await stop.wait()
        finally:
            log.info("slack: stopping")
            await receiver.stop()
            await deliveries.stop(self.tuning.shutdown_grace_s)
            log.info("slack: stopped")

    async def connected(self) -> object:
        """Readiness: Socket Mode connected, or the HTTP events server listening."""
        if not self.ready.is_set() or self.receiver is None:
            return "not connected"
        return await self.receiver.connected() or "not connected"

    async def _check_tokens(self, web: AsyncWebClient) -> None:
        """Fail fast on a token Slack refuses; a network problem only warns (Slack may be
        reachable again by the time events arrive)."""
        s = self.settings.slack
        checks: list[tuple[str, Any]] = [("slack.bot_token", web.auth_test)]
        if s.mode == "socket":
            app_token = s.app_token.get_secret_value()
            checks.append(("slack.app_token",
                           lambda: web.apps_connections_open(app_token=app_token)))
        for setting, call in checks:
            try:
                await call()
            except SlackApiError as exc:
                _, error = api_error(exc)
                if error in _BAD_TOKEN:
                    raise ConfigError(f"setting `{setting}` was refused by Slack ({error})") \
                        from None
                log.warning("slack: checking %s failed (%s); starting anyway", setting,
                            error or exc)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("slack: Web API unreachable at start (%s); starting anyway", exc)
                return
