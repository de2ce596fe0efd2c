"""The fake Telegram's Bot API methods on chats and messages (`sendMessage`,
`editMessageText`, `sendMessageDraft`, `deleteMessage`, `answerCallbackQuery`, commands...):
each checks its parameters as Telegram does (text length, formatting, reply markup, thread)
and records what users then see, or raises Telegram's refusal as an `ApiError`."""

from __future__ import annotations

import time
from typing import Any

from tests.fakes.telegram_format import ApiError, check_entity, parse_markup
from tests.fakes.telegram_markup import check_reply_markup
from tests.fakes.telegram_model import BOT, Chat
from tests.fakes.telegram_users import TelegramUsers

MAX_TEXT = 4096
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)


class TelegramMethods(TelegramUsers):
    """The `api_<method>` handlers for messages that `FakeTelegram` routes calls to."""

    # -- checks ----------------------------------------------------------------------------

    def _check_thread(self, chat: Chat, thread: Any) -> int | None:
        if not thread:
            return None
        if not chat.is_forum and chat.type != "private":
            raise ApiError(400, "Bad Request: message thread not found")
        return int(thread)

    def _check_text(self, text: str, entities: list[dict[str, Any]], parse_mode: str) -> str:
        """The text the message shows (a parse mode's markup removed; the entities it makes
        are not recorded), or the refusal Telegram gives."""
        if parse_mode:
            text = parse_markup(text, parse_mode)
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        length = len(text.encode("utf-16-le")) // 2
        if length > MAX_TEXT:
            raise ApiError(400, "Bad Request: message is too long")
        if (entities or parse_mode) and self.reject_entities:
            raise ApiError(400, "Bad Request: can't parse entities: Unsupported start tag "
                                "\"b\" at byte offset 0")
        for e in entities:
            check_entity(e, length)
        return text

    def _target_chat(self, params: dict[str, Any]) -> Chat:
        chat = self.chats.get(int(params["chat_id"]))
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        return chat

    # -- the Bot API: messages -------------------------------------------------------------

    async def api_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**BOT.json(), "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}

    async def api_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._target_chat(params)
        text, entities = str(params.get("text", "")), list(params.get("entities") or [])
        text = self._check_text(text, entities, str(params.get("parse_mode", "")))
        reply = params.get("reply_parameters") or {}
        thread = self._check_thread(chat, params.get("message_thread_id"))
        check_reply_markup(params.get("reply_markup"))
        msg = self._new_msg(
            chat, BOT, text=text, entities=entities, thread_id=thread,
            reply_to=reply.get("message_id"), reply_markup=params.get("reply_markup"),
            versions=[text], formats=[entities],
        )
        return msg.json(self.msgs)

    async def api_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._target_chat(params)
        msg = self.msgs.get((chat.id, int(params["message_id"])))
        if msg is None or msg.deleted:
            raise ApiError(400, "Bad Request: message to edit not found")
        if not msg.from_bot:
            raise ApiError(400, "Bad Request: message can't be edited")
        text, entities = str(params.get("text", "")), list(params.get("entities") or [])
        text = self._check_text(text, entities, str(params.get("parse_mode", "")))
        markup = params.get("reply_markup")
        check_reply_markup(markup)
        if markup is not None and "inline_keyboard" not in markup:
            raise ApiError(400, "Bad Request: inline keyboard expected")
        if text == msg.text and entities == msg.entities and markup == msg.reply_markup:
            raise ApiError(400, NOT_MODIFIED)
        msg.text, msg.entities, msg.reply_markup = text, entities, markup
        msg.versions.append(text)
        msg.formats.append(entities)
        return msg.json(self.msgs)

    async def api_sendMessageDraft(self, params: dict[str, Any]) -> bool:
        chat = self._target_chat(params)
        if not self.drafts_supported or chat.type != "private":
            raise ApiError(400, "Bad Request: TEXTDRAFT_PEER_INVALID")
        text, entities = str(params.get("text", "")), list(params.get("entities") or [])
        if text:
            text = self._check_text(text, entities, str(params.get("parse_mode", "")))
        self.drafts[(chat.id, int(params["draft_id"]))].append(text)
        self.draft_formats[(chat.id, int(params["draft_id"]))].append(entities)
        return True

    async def api_sendChatAction(self, params: dict[str, Any]) -> bool:
        chat = self._target_chat(params)
        self.actions.append((chat.id, str(params.get("action")), time.monotonic()))
        return True

    async def api_deleteMessage(self, params: dict[str, Any]) -> bool:
        chat = self._target_chat(params)
        msg = self.msgs.get((chat.id, int(params["message_id"])))
        if msg is None or msg.deleted:
            raise ApiError(400, "Bad Request: message to delete not found")
        msg.deleted = True
        return True

    async def api_setMyCommands(self, params: dict[str, Any]) -> bool:
        self.commands[str(params.get("language_code") or "")] = list(params["commands"])
        return True

    async def api_getMyCommands(self, params: dict[str, Any]) -> list[dict[str, str]]:
        return self.commands.get(str(params.get("language_code") or ""), [])

    async def api_answerCallbackQuery(self, params: dict[str, Any]) -> bool:
        query = str(params.get("callback_query_id") or "")
        if query not in self.callback_queries:
            raise ApiError(400, "Bad Request: query is too old and response timeout expired or "
                                "query ID is invalid")
        if any(a.get("callback_query_id") == query for a in self.answered_callbacks):
            raise ApiError(400, "Bad Request: query is too old and response timeout expired or "
                                "query ID is invalid")
        if len(str(params.get("text") or "")) > 200:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        self.answered_callbacks.append(params)
        return True

    async def api_editMessageReplyMarkup(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._target_chat(params)
        msg = self.msgs.get((chat.id, int(params["message_id"])))
        if msg is None or msg.deleted:
            raise ApiError(400, "Bad Request: message to edit not found")
        markup = params.get("reply_markup")
        check_reply_markup(markup)
        if markup == msg.reply_markup:
            raise ApiError(400, NOT_MODIFIED)
        msg.reply_markup = markup
        return msg.json(self.msgs)
