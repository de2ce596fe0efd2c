"""The fake Slack's Block Kit, views and helpdesk methods: blocks validated as Slack does
(`invalid_blocks`), modals opened only with a fresh trigger id, App Home views published,
permalinks, user group members; and what people do with them (press a shown button, submit
a modal, open the App Home)."""

from __future__ import annotations

import json
import time
from typing import Any

BLOCK_TYPES = frozenset({"section", "markdown", "actions", "context", "divider", "header",
                         "input", "image", "rich_text"})


def _plain(obj: Any, most: int) -> bool:
    return (isinstance(obj, dict) and obj.get("type") == "plain_text"
            and 0 < len(str(obj.get("text") or "")) <= most)


def _button_error(e: dict[str, Any]) -> str | None:
    if e.get("type") != "button":
        return "only buttons in actions blocks"
    if not _plain(e.get("text"), 75):
        return "button text must be plain_text of 1..75 characters"
    if not 0 < len(str(e.get("action_id") or "")) <= 255:
        return "button action_id of 1..255 characters"
    if len(str(e.get("value") or "")) > 2000:
        return "button value over 2000 characters"
    if e.get("style") not in (None, "primary", "danger"):
        return "button style"
    return None


def _block_error(b: dict[str, Any], action_ids: set[str]) -> str | None:
    kind = b["type"]
    if kind == "section":
        text = b.get("text") or {}
        if text.get("type") not in ("mrkdwn", "plain_text") or \
                not 0 < len(str(text.get("text") or "")) <= 3000:
            return "section text of 1..3000 characters"
    elif kind == "header" and not _plain(b.get("text"), 150):
        return "header text"
    elif kind == "actions":
        elements = b.get("elements") or []
        if not 0 < len(elements) <= 25:
            return "actions block with 1..25 elements"
        for e in elements:
            why = _button_error(e)
            if why:
                return why
            if e["action_id"] in action_ids:
                return f"action_id {e['action_id']} repeated"
            action_ids.add(e["action_id"])
    elif kind == "input" and (not _plain(b.get("label"), 2000)
                              or not isinstance(b.get("element"), dict)):
        return "input block needs a label and an element"
    return None


def blocks_error(blocks: Any, most: int = 50) -> str | None:
    """Why Slack would refuse `blocks` (None: fine)."""
    if not isinstance(blocks, list) or len(blocks) > most:
        return f"at most {most} blocks"
    block_ids: set[str] = set()
    action_ids: set[str] = set()
    for b in blocks:
        if not isinstance(b, dict) or b.get("type") not in BLOCK_TYPES:
            return f"unknown block {b!r:.60}"
        bid = b.get("block_id")
        if bid is not None:
            if bid in block_ids or not 0 < len(str(bid)) <= 255:
                return f"block_id {bid!r} repeated or too long"
            block_ids.add(bid)
        why = _block_error(b, action_ids)
        if why:
            return why
    return None


def view_error(view: Any, kind: str) -> str | None:
    if not isinstance(view, dict) or view.get("type") != kind:
        return f"view type must be {kind}"
    if kind == "modal":
        if not _plain(view.get("title"), 24):
            return "modal title of 1..24 characters"
        for key in ("submit", "close"):
            if key in view and not _plain(view[key], 24):
                return f"modal {key} of 1..24 characters"
        if len(str(view.get("private_metadata") or "")) > 3000:
            return "private_metadata over 3000 characters"
    return blocks_error(view.get("blocks") or [], 100)


def buttons_of(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for b in blocks if b.get("type") == "actions" for e in b.get("elements") or []]


class HelpdeskFake:
    """Mixed into `FakeSlack` (which provides the attributes annotated here)."""

    messages: list[Any]
    url: str
    _n: int

    def _init_helpdesk(self) -> None:
        self.views: list[dict[str, Any]] = []
        """Modals opened: {"user", "view", "id"}."""
        self.home: dict[str, dict[str, Any]] = {}
        """user -> the App Home view published for them."""
        self.usergroups: dict[str, list[str]] = {}
        self.block_errors: list[str] = []
        self._triggers: dict[str, str] = {}
        """trigger id -> the user whose action made it (each opens one view)."""

    def _trigger(self, user: str) -> str:
        self._n += 1
        trigger = f"trig.{self._n}"
        self._triggers[trigger] = user
        return trigger

    def _invalid(self, why: str) -> dict[str, Any]:
        self.block_errors.append(why)
        return {"ok": False, "error": "invalid_blocks", "errors": [why]}

    def _m_views_open(self, a: dict[str, Any]) -> dict[str, Any]:
        user = self._triggers.pop(str(a.get("trigger_id") or ""), None)
        if user is None:
            return {"ok": False, "error": "invalid_trigger_id"}
        view = _decoded(a.get("view"))
        why = view_error(view, "modal")
        if why:
            return self._invalid(why)
        self._n += 1
        opened = {"user": user, "view": view, "id": f"V{self._n:08d}"}
        self.views.append(opened)
        return {"ok": True, "view": {"id": opened["id"], **view}}

    def _m_views_publish(self, a: dict[str, Any]) -> dict[str, Any]:
        view = _decoded(a.get("view"))
        why = view_error(view, "home")
        if why:
            return self._invalid(why)
        if not a.get("user_id"):
            return {"ok": False, "error": "invalid_arguments"}
        self.home[str(a["user_id"])] = view
        return {"ok": True, "view": view}

    def _m_chat_getPermalink(self, a: dict[str, Any]) -> dict[str, Any]:
        msg = next((m for m in self.messages if m.channel == a.get("channel")
                    and m.ts == a.get("message_ts") and not m.deleted), None)
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        link = f"https://fake.slack.com/archives/{msg.channel}/p{msg.ts.replace('.', '')}"
        if msg.thread_ts and msg.thread_ts != msg.ts:
            link += f"?thread_ts={msg.thread_ts}&cid={msg.channel}"
        return {"ok": True, "channel": msg.channel, "permalink": link}

    def _m_usergroups_users_list(self, a: dict[str, Any]) -> dict[str, Any]:
        group = str(a.get("usergroup") or "")
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[group])}

    # -- what people do ----------------------------------------------------------------

    def action_payload(self, msg: Any, action_id: str, user: str) -> dict[str, Any]:
        """A press of the button `action_id` shown on `msg` (it must be shown there)."""
        shown = [b for b in buttons_of(msg.blocks) if b["action_id"] == action_id]
        assert not msg.deleted and shown, f"no button {action_id} on message {msg.ts}"
        self._n += 1
        message: dict[str, Any] = {"type": "message", "ts": msg.ts, "user": msg.user,
                                   "text": msg.text, "blocks": msg.blocks}
        container: dict[str, Any] = {"type": "message", "message_ts": msg.ts,
                                     "channel_id": msg.channel, "is_ephemeral": False}
        if msg.thread_ts:
            message["thread_ts"] = container["thread_ts"] = msg.thread_ts
        return {"type": "block_actions", "team": {"id": "T0KULLM01", "domain": "fake"},
                "user": {"id": user, "team_id": "T0KULLM01"}, "api_app_id": "A0KULLM01",
                "token": "fake-verification-token", "trigger_id": self._trigger(user),
                "channel": {"id": msg.channel}, "container": container, "message": message,
                "response_url": f"{self.url}/response/{self._n}",
                "actions": [{"type": "button", "action_id": action_id,
                             "block_id": "kullm_hd", "value": shown[0].get("value", ""),
                             "action_ts": str(time.time())}]}

    def submission_payload(self, opened: dict[str, Any], value: str) -> dict[str, Any]:
        """The person submits the modal `opened` with `value` typed into its input."""
        view = opened["view"]
        values = {b["block_id"]: {b["element"]["action_id"]: {
            "type": b["element"]["type"], "value": value or None}}
            for b in view.get("blocks") or [] if b.get("type") == "input"}
        return {"type": "view_submission", "team": {"id": "T0KULLM01", "domain": "fake"},
                "user": {"id": opened["user"], "team_id": "T0KULLM01"},
                "api_app_id": "A0KULLM01", "token": "fake-verification-token",
                "trigger_id": self._trigger(opened["user"]),
                "view": {**view, "id": opened["id"], "team_id": "T0KULLM01",
                         "state": {"values": values}, "hash": "h1"}}


def _decoded(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value
