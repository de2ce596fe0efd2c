"""The helpdesk's Block Kit: the buttons under an answer, the hand-off, the comment modal, the
App Home; and how the buttons ride on the reply's own last Slack call.

A reply's calls are made by `bots.slack.calls` from the reply's state; the buttons are not
part of that state. `SlackReply` (bots/slack/sink.py) marks the call that writes the final text
of the last message part (`chat.stopStream`, `chat.postMessage` or `chat.update`) by setting
`ATTACH` for its duration, and `HelpdeskWebClient` appends the actions block to that call. So
the buttons cost no call of their own in the usual case, never change how the text is split
or streamed, and count against the same send budget as the text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bots.slack.scheduler import CountingWebClient
from bots.slack.texts import st
from kullm_core.helpdesk.actions import Action
from kullm_core.texts import t

ACTIONS_BLOCK = "kullm_hd"
COMMENT_VIEW = "kullm_hd_comment"
COMMENT_BLOCK = "comment"
COMMENT_INPUT = "text"
ACTION_PATTERN = r"^hd:(up|down|human|res):"
_SECTION_MAX = 3000
"""Slack's limit on a section block's text."""
_WITH_BLOCKS = frozenset({"chat.postMessage", "chat.update", "chat.stopStream"})


@dataclass
class Attach:
    """Blocks to append to the Slack call being made; `done` once Slack took them."""

    blocks: list[dict[str, Any]]
    done: bool = False


ATTACH: ContextVar[Attach | None] = ContextVar("slack_attach_blocks", default=None)


def actions_block(actions: Sequence[Action]) -> list[dict[str, Any]]:
    """The buttons as one Block Kit actions block ([] without buttons)."""
    if not actions:
        return []
    return [{"type": "actions", "block_id": f"{ACTIONS_BLOCK}:{actions[0].ref[:32]}",
             "elements": [button(a) for a in actions]}]


def button(action: Action, style: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "button", "action_id": action.id, "value": action.id,
                           "text": {"type": "plain_text", "text": action.label[:75],
                                    "emoji": True}}
    if style:
        out["style"] = style
    return out


def sections(text: str, *, code: bool = False) -> list[dict[str, Any]]:
    """mrkdwn text as section blocks (a message with blocks shows only its blocks), cut at
    lines; `code`: each section a code block of its own."""
    out = []
    most = _SECTION_MAX - (6 if code else 0)
    while text:
        cut = len(text) if len(text) <= most else (text.rfind("\n", 0, most) + 1 or most)
        part = f"```{text[:cut]}```" if code else text[:cut]
        out.append({"type": "section", "text": {"type": "mrkdwn", "text": part}})
        text = text[cut:]
    return out


def with_blocks(method: str, body: dict[str, Any], extra: list[dict[str, Any]]) -> dict[str, Any]:
    """`body` of a `method` call with `extra` blocks appended after what it shows."""
    if method == "chat.stopStream":
        return body | {"blocks": [*_blocks(body.get("blocks")), *extra]}
    shown = _blocks(body.get("blocks")) or sections(str(body.get("text") or ""))
    return body | {"blocks": [*shown, *extra]}


def _blocks(raw: Any) -> list[dict[str, Any]]:
    if isinstance(raw, str):
        raw = json.loads(raw) if raw else []
    return list(raw or [])


class HelpdeskWebClient(CountingWebClient):
    """The adapter's Web API client: appends `ATTACH`'s blocks to the message call made
    while it is set (module doc)."""

    async def api_call(  # type: ignore[override]
        self, api_method: str, **kwargs: Any
    ) -> AsyncSlackResponse:
        attach = ATTACH.get()
        body = kwargs.get("json")
        if attach is None or api_method not in _WITH_BLOCKS or not isinstance(body, dict):
            return await super().api_call(api_method, **kwargs)
        kwargs["json"] = with_blocks(api_method, body, attach.blocks)
        resp = await super().api_call(api_method, **kwargs)
        attach.done = True
        return resp


# -- what the helpdesk posts ------------------------------------------------------------------


def mentions(responders: Sequence[str]) -> str:
    """Responders in Slack's syntax: a user group `<!subteam^S…>`, a person `<@U…>`."""
    return " ".join(f"<!subteam^{r}>" if r.startswith("S") else f"<@{r}>"
                    for r in responders if r)


def handoff_message(text: str, resolve: Action | None) -> dict[str, Any]:
    """chat.postMessage arguments of a hand-off (with its Resolved button while open)."""
    blocks = sections(text)
    if resolve is not None:
        blocks.append({"type": "actions", "block_id": f"{ACTIONS_BLOCK}:res",
                       "elements": [button(resolve, "primary")]})
    return {"text": text, "blocks": blocks}


def comment_view(lang: str, meta: dict[str, str]) -> dict[str, Any]:
    """The 👎 comment modal; `meta` comes back in its view_submission."""
    return {
        "type": "modal", "callback_id": COMMENT_VIEW, "private_metadata": json.dumps(meta),
        "title": {"type": "plain_text", "text": t("hd.comment_title", lang)[:24]},
        "submit": {"type": "plain_text", "text": st("hd_send", lang)},
        "close": {"type": "plain_text", "text": st("hd_skip", lang)},
        "blocks": [{
            "type": "input", "block_id": COMMENT_BLOCK, "optional": True,
            "label": {"type": "plain_text", "text": t("hd.comment_label", lang)},
            "element": {"type": "plain_text_input", "action_id": COMMENT_INPUT,
                        "multiline": True, "max_length": 2000},
        }],
    }


def submitted_comment(view: dict[str, Any]) -> str:
    values = ((view.get("state") or {}).get("values") or {}).get(COMMENT_BLOCK) or {}
    return str((values.get(COMMENT_INPUT) or {}).get("value") or "")


def home_view(title: str, body: str, monospace: bool) -> dict[str, Any]:
    """The App Home tab: a header and the summary (a code block for the statistics)."""
    return {"type": "home", "blocks": [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        *sections(body, code=monospace),
    ]}
