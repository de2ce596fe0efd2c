"""The Slack adapter assembled: Web API client, scheduler, deliveries, Bolt app, receiver."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import Any

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_bolt.middleware.assistant.async_assistant import AsyncAssistant
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.commands import FORGET_NO, FORGET_YES, Commands
from bots.slack.config import SlackTuning
from bots.slack.delivery import Deliveries
from bots.slack.handlers import Inbound
from bots.slack.receivers import HttpReceiver, Receiver, SocketModeReceiver
from bots.slack.reply import Env
from bots.slack.scheduler import CountingWebClient, Scheduler, api_error
from bots.slack.store import SlackStore
from kullm_core.client import CoreClient
from kullm_core.errors import ConfigError
from kullm_core.settings import Settings

log = logging.getLogger(__name__)


def _intervals(settings: Settings, tuning: SlackTuning) -> Any:
    per_second = {
        "post": tuning.post_rate(settings),
        "update": tuning.update_limit(settings) / 60,
        "stream": tuning.stream_calls_per_minute / 60,
        "t3": tuning.tier3_per_minute / 60,
        "t4": tuning.tier4_per_minute / 60,
    }

    def interval(bucket: str) -> float:
        rate = per_second.get(bucket.split(":", 1)[0], per_second["t3"])
        return (1.0 / rate) * (1.0 + tuning.safety_margin)

    return interval


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
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ready = asyncio.Event()
        self.http_port: int | None = None
        self.scheduler = Scheduler(_intervals(settings, self.tuning))
        self.store = SlackStore(client.redis, settings.redis.prefix, self.tuning, self.owner,
                                settings.history.retention_hours * 3600)
        self.deliveries: Deliveries | None = None
        self.receiver: Receiver | None = None

    def _web(self, session: aiohttp.ClientSession) -> AsyncWebClient:
        s = self.settings.slack
        base = s.base_url if s.base_url.endswith("/") else s.base_url + "/"
        return CountingWebClient(
            token=s.bot_token.get_secret_value(), base_url=base, session=session,
            timeout=int(self.tuning.api_timeout_s), logger=logging.getLogger("bots.slack.sdk"),
            retry_handlers=[self.scheduler.rate_limit_handler(self.tuning.max_429_retries)],
        )

    def _app(self, web: AsyncWebClient, inbound: Inbound, commands: Commands) -> AsyncApp:
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
        async with aiohttp.ClientSession() as session, self.scheduler, \
                self.client.reply_streams() as streams:
            web = self._web(session)
            env = Env(web, self.tuning, self.scheduler.wake, self._persist)
            self.deliveries = Deliveries(self.client, self.scheduler, self.store, env, streams,
                                         native=self.settings.slack.native_streaming)
            inbound = Inbound(self.settings, self.client, web, self.scheduler, self.store,
                              self.deliveries)
            commands = Commands(self.client, self.store, self.deliveries, inbound)
            receiver = self.receiver = self._receiver(self._app(web, inbound, commands), web)
            await self._check_tokens(web)
            await self.deliveries.start()
            if not await _until_stopped(receiver.start(), stop):
                await self.deliveries.stop(0)
                await receiver.stop()
                return
            if isinstance(receiver, HttpReceiver):
                self.http_port = receiver.port
            log.info("slack: ready (%s mode, owner %s)", self.settings.slack.mode, self.owner)
            self.ready.set()
            try:
                await stop.wait()
            finally:
                log.info("slack: stopping")
                await receiver.stop()
                await self.deliveries.stop(self.tuning.shutdown_grace_s)
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

    async def _persist(self, reply: Any) -> None:
        if self.deliveries is not None:
            await self.deliveries.persist(reply)
