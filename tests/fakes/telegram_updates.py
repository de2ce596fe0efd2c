"""How the fake Telegram hands updates to the bot: `getUpdates` long polling (an update stays
pending until a later offset confirms it), or a webhook once `setWebhook` is called (each
update POSTed until answered 200), plus redelivered and forged updates for the tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp

from tests.fakes.telegram_format import ApiError
from tests.fakes.telegram_model import Msg, User
from tests.fakes.telegram_users import TelegramUsers


class TelegramUpdates(TelegramUsers):
    """Update delivery, on top of the state in `TelegramUsers`."""

    # -- the Bot API: updates and webhooks -------------------------------------------------

    async def api_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active;"
                                " use deleteWebhook to delete the webhook first")
        offset = int(params.get("offset") or 0)
        if offset:
            self.confirmed = max(self.confirmed, offset - 1)
        limit = int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)

        def pending() -> list[dict[str, Any]]:
            fresh = [u for u in self.updates if u["update_id"] > self.confirmed]
            return (self._again + fresh)[:limit]

        if not pending() and timeout > 0:
            with contextlib.suppress(TimeoutError):
                await self.wait_for(lambda: bool(pending()) or self._closing, timeout)
        batch = pending()
        self._again = [u for u in self._again if u not in batch]
        return batch

    async def api_setWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = {"url": params["url"], "secret_token": params.get("secret_token")}
        if self._webhook_task is None or self._webhook_task.done():
            self._webhook_task = asyncio.create_task(self._push_webhook())
        return True

    async def api_deleteWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = None
        if params.get("drop_pending_updates") in ("true", True):
            self.confirmed = self._next_update - 1
        return True

    async def api_getWebhookInfo(self, params: dict[str, Any]) -> dict[str, Any]:
        pending = len([u for u in self.updates if u["update_id"] > self.confirmed])
        return {"url": (self.webhook or {}).get("url", ""), "has_custom_certificate": False,
                "pending_update_count": pending}

    # -- delivery: redelivered, webhook and forged updates ---------------------------------

    async def redeliver(self, update_id: int) -> None:
        """Send an already delivered update again (Telegram does after a timeout/restart)."""
        original = next(u for u in self.updates if u["update_id"] == update_id)
        if self.webhook:
            await self.post_to_webhook(original, self.webhook.get("secret_token"))
        else:
            self._again.append(dict(original))
            await self._notify()

    async def post_to_webhook(
        self, update: dict[str, Any], secret: str | None, url: str | None = None
    ) -> int:
        """POST one update to the webhook (or to `url`, e.g. one replica behind a load
        balancer) as Telegram does; returns the HTTP status."""
        target = url or (self.webhook or {}).get("url")
        if not target:
            raise RuntimeError("no webhook set")
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        async with aiohttp.ClientSession() as http, http.post(
            target, data=json.dumps(update), headers=headers
        ) as resp:
            return resp.status

    def forge_update(self, chat_id: int, user: User, text: str) -> tuple[Msg, dict[str, Any]]:
        """An update Telegram never sent (for requests without the right secret)."""
        chat = self.chat(chat_id, title=user.first_name)
        msg = self._new_msg(chat, user, text=text)
        return msg, {"update_id": 10**9 + msg.message_id, "message": msg.json(self.msgs)}

    def update_of(self, msg: Msg) -> dict[str, Any]:
        return next(u for u in self.updates if u["update_id"] == msg.update_id)

    async def _push_webhook(self) -> None:
        while self.webhook:
            todo = [u for u in self.updates if u["update_id"] > self.confirmed]
            if not todo:
                await self.wait_for(
                    lambda: not self.webhook
                    or any(u["update_id"] > self.confirmed for u in self.updates), 3600)
                continue
            try:
                status = await self.post_to_webhook(todo[0], self.webhook.get("secret_token"))
            except aiohttp.ClientError:
                status = 0
            if status == 200:
                self.confirmed = max(self.confirmed, int(todo[0]["update_id"]))
                await self._notify()
            else:
                await asyncio.sleep(0.2)  # Telegram retries failed deliveries later
