"""How events reach the Bolt app: Socket Mode (default) or HTTP Events API.

HTTP mode verifies Slack's signature with Bolt's request verification (a missing, wrong or
stale signature gets 401 and is never processed) and serves `GET /healthz` for probes.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)


class Receiver(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def connected(self) -> bool: ...


class SocketModeReceiver:
    def __init__(self, app: AsyncApp, app_token: str, web_client: AsyncWebClient,
                 ping_interval: float) -> None:
        self._app = app
        self._token = app_token
        self._web = web_client
        self._ping = ping_interval
        self._handler: AsyncSocketModeHandler | None = None

    async def start(self) -> None:
        self._handler = AsyncSocketModeHandler(self._app, self._token, web_client=self._web,
                                               ping_interval=self._ping)
        await self._handler.connect_async()
        log.info("slack: connected in Socket Mode")

    async def connected(self) -> bool:
        return self._handler is not None and await self._handler.client.is_connected()

    async def stop(self) -> None:
        if self._handler is not None:
            await self._handler.close_async()
            self._handler = None


class HttpReceiver:
    def __init__(self, app: AsyncApp, host: str, port: int, path: str) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._path = path
        self._runner: web.AppRunner | None = None
        self.port = port

    async def _events(self, request: web.Request) -> web.Response:
        bolt_request = await to_bolt_request(request)
        bolt_response = await self._app.async_dispatch(bolt_request)
        return await to_aiohttp_response(bolt_response)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def start(self) -> None:
        server = web.Application()
        server.router.add_post(self._path, self._events)
        server.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(server, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                self.port = int(address[1])
                break
        log.info("slack: HTTP events on %s:%d%s", self._host, self.port, self._path)

    async def connected(self) -> bool:
        return self._runner is not None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
