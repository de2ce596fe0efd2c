"""The fake Slack's Web API methods on messages (`chat.*` with streaming, `conversations.*`,
`reactions.*`, `assistant.threads.*`, `users.info`): each takes the call's arguments and returns
Slack's answer, refusing what Slack refuses (`msg_too_long`, `invalid_blocks`,
`message_not_in_streaming_state`...). The Block Kit, views and helpdesk methods are in
`slack_blocks`; routing, rate limits and faults in `slack_api`."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.slack_blocks import blocks_error
from tests.fakes.slack_events import SlackEvents
from tests.fakes.slack_state import BOT_ID, BOT_USER, TEAM, Message


class SlackMethods(SlackEvents):
    """The `_m_<method>` handlers `FakeSlack` routes Web API calls to."""

    def _content_error(self, text: str, blocks: list[dict[str, Any]]) -> str | None:
        md = [b for b in blocks if b.get("type") == "markdown"]
        if md and self.reject_markdown_blocks:
            return "invalid_blocks"
        if sum(len(b.get("text", "")) for b in md) > self.limits.max_markdown:
            return "msg_blocks_too_long"
        if len(text) > self.limits.max_text:
            return "msg_too_long"
        if not text and not blocks:
            return "no_text"
        why = blocks_error(blocks) if blocks else None
        if why:
            self.block_errors.append(why)
            return "invalid_blocks"
        return None

    def _m_auth_test(self, a: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "kullm",
                "team_id": TEAM, "user_id": BOT_USER, "bot_id": BOT_ID,
                "is_enterprise_install": False}

    def _m_apps_connections_open(self, a: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.url.replace("http", "ws") + "/ws"}

    def _m_chat_postMessage(self, a: dict[str, Any]) -> dict[str, Any]:
        blocks = _json(a.get("blocks")) or []
        error = self._content_error(str(a.get("text") or ""), blocks)
        if error:
            return {"ok": False, "error": error}
        msg = Message(a["channel"], self._ts(), BOT_USER, a.get("thread_ts") or None, True,
                      str(a.get("text") or ""), blocks, metadata=_json(a.get("metadata")))
        self._add(msg)
        self._echo(msg)
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def _m_chat_update(self, a: dict[str, Any]) -> dict[str, Any]:
        msg = self._find(a["channel"], a["ts"])
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        blocks = _json(a.get("blocks"))
        error = self._content_error(str(a.get("text") or ""), blocks or [])
        if error:
            return {"ok": False, "error": error}
        msg.text, msg.blocks, msg.streamed, msg.streaming = str(a.get("text") or ""), \
            blocks or [], False, False
        self._shown(msg, edit=True)
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    # -- streaming (chat.startStream / appendStream / stopStream) --------------------------

    def _stream_text(self, a: dict[str, Any]) -> str:
        chunks = _json(a.get("chunks")) or []
        text = "".join(c.get("text", "") for c in chunks if c.get("type") == "markdown_text")
        return str(a.get("markdown_text") or "") + text

    def _m_chat_startStream(self, a: dict[str, Any]) -> dict[str, Any]:
        if self.streaming_error:
            return {"ok": False, "error": self.streaming_error}
        if not a.get("thread_ts"):
            return {"ok": False, "error": "invalid_arguments"}
        if not str(a["channel"]).startswith("D") and not a.get("recipient_user_id"):
            return {"ok": False, "error": "missing_recipient_user_id"}
        text = self._stream_text(a)
        if len(text) > self.limits.max_stream_chunk:
            return {"ok": False, "error": "msg_too_long"}
        msg = Message(a["channel"], self._ts(), BOT_USER, a["thread_ts"], True,
                      stream_text=text, streamed=True, streaming=True)
        self._add(msg)
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def _stream_op(self, a: dict[str, Any], stop: bool) -> dict[str, Any]:
        msg = self._find(a["channel"], a["ts"])
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        if not msg.streaming:
            return {"ok": False, "error": "message_not_in_streaming_state"}
        text = self._stream_text(a)
        if len(text) > self.limits.max_stream_chunk or \
                len(msg.stream_text) + len(text) > self.limits.max_stream_total:
            return {"ok": False, "error": "msg_too_long"}
        blocks = (_json(a.get("blocks")) or []) if stop else []
        why = blocks_error(blocks) if blocks else None
        if why:
            self.block_errors.append(why)
            return {"ok": False, "error": "invalid_blocks"}
        msg.stream_text += text
        msg.streaming = not stop
        if stop:
            msg.metadata = _json(a.get("metadata"))
            msg.blocks = blocks  # appended after the streamed text
        self._shown(msg, edit=bool(text or blocks))
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def _m_chat_appendStream(self, a: dict[str, Any]) -> dict[str, Any]:
        return self._stream_op(a, stop=False)

    def _m_chat_stopStream(self, a: dict[str, Any]) -> dict[str, Any]:
        return self._stream_op(a, stop=True)

    # -- other messages, threads, reactions, assistant -------------------------------------

    def _m_chat_delete(self, a: dict[str, Any]) -> dict[str, Any]:
        msg = self._find(a["channel"], a["ts"])
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        msg.deleted = True
        self._shown(msg, edit=True)
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def _m_chat_postEphemeral(self, a: dict[str, Any]) -> dict[str, Any]:
        self.ephemerals.append({"channel": a["channel"], "user": a["user"],
                                "text": a.get("text", ""), "thread_ts": a.get("thread_ts")})
        return {"ok": True, "message_ts": self._ts()}

    def _thread_view(self, m: Message, meta: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": m.ts, "user": m.user, "text": m.visible}
        if m.thread_ts:
            out["thread_ts"] = m.thread_ts
        if m.bot:
            out["bot_id"] = BOT_ID
        if meta and m.metadata:
            out["metadata"] = m.metadata
        return out

    def _m_conversations_replies(self, a: dict[str, Any]) -> dict[str, Any]:
        meta = str(a.get("include_all_metadata")).lower() in ("1", "true")
        msgs = [self._thread_view(m, meta) for m in self.messages
                if m.channel == a["channel"] and not m.deleted
                and (m.ts == a["ts"] or m.thread_ts == a["ts"])]
        return {"ok": True, "messages": msgs, "has_more": False}

    def _m_conversations_history(self, a: dict[str, Any]) -> dict[str, Any]:
        meta = str(a.get("include_all_metadata")).lower() in ("1", "true")
        oldest = str(a.get("oldest") or "")
        msgs = [self._thread_view(m, meta) for m in reversed(self.messages)
                if m.channel == a["channel"] and not m.deleted and not m.thread_ts
                and m.ts > oldest]
        return {"ok": True, "messages": msgs, "has_more": False}

    def _m_reactions_add(self, a: dict[str, Any]) -> dict[str, Any]:
        self.reactions.append((a["channel"], a["timestamp"], a["name"]))
        return {"ok": True}

    def _m_reactions_remove(self, a: dict[str, Any]) -> dict[str, Any]:
        key = (a["channel"], a["timestamp"], a["name"])
        if key not in self.reactions:
            return {"ok": False, "error": "no_reaction"}
        self.reactions.remove(key)
        return {"ok": True}

    def _m_assistant_threads_setStatus(self, a: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append((a["channel_id"], a["thread_ts"], a.get("status", "")))
        return {"ok": True}

    def _m_assistant_threads_setSuggestedPrompts(self, a: dict[str, Any]) -> dict[str, Any]:
        self.prompts.append(a)
        return {"ok": True}

    def _m_users_info(self, a: dict[str, Any]) -> dict[str, Any]:
        user = str(a["user"])
        return {"ok": True, "user": {"id": user, "name": f"name-{user.lower()}",
                                     "locale": self.locales.get(user, "ko-KR")}}


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value else None
        except ValueError:
            return None
    return value
