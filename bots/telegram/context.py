"""The message a group question replies to, and its reply chain as far as the bot saw it, as
context (`Quoted`) for the question.

Telegram gives the replied-to message with the update (its text and author), but not what
that one replied to. So the bot keeps a small cache of the group messages it saw, each with
the id it replied to, and walks up from there. The bot's own messages are not quoted (its
answers are in the history), nor messages the asker's conversation already answered.

Own keys (under `{redis.prefix}:tg:`), each for `ttl_s` (a day by default); /forget removes
a user's through `client.on_forget`:

| key               | what                                                            |
|-------------------|-----------------------------------------------------------------|
| seen:{chat}:{msg} | JSON `{u, n, t, b, at, r}`: author, name, text, bot?, date, parent |
| seenby:{user}     | set of that user's `seen:` keys (for /forget)                   |
"""

from __future__ import annotations

import json
import logging
from typing import Any

from redis.asyncio import Redis
from telegram import Message

from bots.telegram.routing import PLATFORM
from kullm_core.text_clean import clean_text
from kullm_core.wire import Job, Quoted

log = logging.getLogger(__name__)

SEEN_TTL_S = 24 * 3600
MAX_CHAIN = 8
MAX_CHARS = 2000


def _parent_id(msg: Message) -> int | None:
    parent = msg.reply_to_message
    if parent is None or parent.forum_topic_created is not None:  # a topic's start
        return None
    return parent.message_id


def _record(msg: Message) -> dict[str, Any] | None:
    user = msg.from_user
    text = msg.text or msg.caption or ""
    if user is None or not text.strip():
        return None
    # Named as the asker is in the prompt (`routing.user_ref`: the @username).
    return {"u": user.id, "n": user.username or user.full_name, "t": text[:MAX_CHARS],
            "b": user.is_bot, "at": msg.date.timestamp() if msg.date else 0.0, "r": _parent_id(msg)}


class SeenMessages:
    def __init__(self, redis: Redis, prefix: str, bot_id: int, ttl_s: int = SEEN_TTL_S,
                 depth: int = MAX_CHAIN) -> None:
        self.r = redis
        self.p = prefix
        self.bot_id = bot_id
        self.ttl_s = ttl_s
        self.depth = depth

    def _key(self, chat_id: int, message_id: int) -> str:
        return f"{self.p}:seen:{chat_id}:{message_id}"

    async def remember(self, msg: Message) -> None:
        """Keep a group text message for later reply chains."""
        rec = _record(msg)
        if rec is None:
            return
        key, index = self._key(msg.chat.id, msg.message_id), f"{self.p}:seenby:{rec['u']}"
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.set(key, json.dumps(rec, ensure_ascii=False), ex=self.ttl_s)
            pipe.sadd(index, key)
            pipe.expire(index, self.ttl_s)
            await pipe.execute()

    async def quoted(self, msg: Message, answered: set[str]) -> list[Quoted]:
        """The chain `msg` replies to, oldest first; `answered`: job ids of the asker's
        history (those questions are in the prompt already)."""
        parent = msg.reply_to_message
        if _parent_id(msg) is None or parent is None:
            return []
        chain: list[tuple[int, dict[str, Any]]] = []
        mid: int | None = parent.message_id
        current = await self._get(msg.chat.id, parent.message_id) or _record(parent)
        while current is not None and mid is not None and len(chain) < self.depth:
            chain.append((mid, current))
            mid = current.get("r")
            current = await self._get(msg.chat.id, mid) if mid else None
        out = []
        for mid, rec in reversed(chain):
            if rec.get("b") or rec["u"] == self.bot_id:
                continue
            if Job.id_for(source_id_of(msg.chat.id, mid, self.bot_id)) in answered:
                continue
            text = clean_text(str(rec["t"])).strip()
            if text:
                out.append(Quoted(user_id=str(rec["u"]), name=str(rec.get("n") or ""),
                                  text=text, at=float(rec.get("at") or 0.0)))
        if out:
            log.info("chat %s: %d replied-to message(s) as context", msg.chat.id, len(out))
        return out

    async def _get(self, chat_id: int, message_id: int) -> dict[str, Any] | None:
        raw = await self.r.get(self._key(chat_id, message_id))
        if not raw:
            return None
        try:
            rec = json.loads(raw)
        except ValueError:
            return None
        return rec if isinstance(rec, dict) else None

    async def forget(self, platform: str, user_id: str) -> None:
        """/forget: the user's cached messages go."""
        if platform != PLATFORM:
            return
        index = f"{self.p}:seenby:{user_id}"
        keys = list(await self.r.smembers(index))  # type: ignore[misc]
        await self.r.delete(index, *keys)
        log.info("forget: %d cached group message(s) of a telegram user removed", len(keys))


def source_id_of(chat_id: int, message_id: int, bot_id: int) -> str:
    """`routing.source_id` of a message known only by its ids."""
    return f"tg:{bot_id}:{chat_id}:{message_id}"

