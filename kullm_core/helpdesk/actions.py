"""The buttons under an answer, platform-neutral: what each means and its compact id.

An id (`hd:up:<job>`, `hd:res:<escalation>`) fits Telegram's 64-byte callback data and a
Slack action value; adapters render `Action`s as inline keyboards or Block Kit buttons and
hand the id of a pressed one back to `Helpdesk.press`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from kullm_core.helpdesk.settings import HelpdeskSettings
from kullm_core.texts import t

ActionKind = Literal["up", "down", "human", "resolve"]
_ID = re.compile(r"^hd:(up|down|human|res):([0-9a-f]{8,64})$")
_SHORT = {"up": "up", "down": "down", "human": "human", "resolve": "res"}
_LONG: dict[str, ActionKind] = {"up": "up", "down": "down", "human": "human",
                                "res": "resolve"}


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    ref: str
    """The job id of the answer (up, down, human) or the escalation id (resolve)."""
    label: str

    @property
    def id(self) -> str:
        return f"hd:{_SHORT[self.kind]}:{self.ref}"


def parse_action(data: str) -> tuple[ActionKind, str] | None:
    """`(kind, ref)` of an action id, or None when it is not one of ours."""
    m = _ID.match(data or "")
    return (_LONG[m.group(1)], m.group(2)) if m else None


def answer_actions(job_id: str, lang: str, settings: HelpdeskSettings) -> list[Action]:
    """The buttons under a finished answer (none when the helpdesk offers neither)."""
    out: list[Action] = []
    if settings.feedback:
        out += [Action("up", job_id, t("hd.up", lang)), Action("down", job_id, t("hd.down", lang))]
    if settings.escalation:
        out.append(Action("human", job_id, t("hd.human", lang)))
    return out


def resolve_action(escalation_id: str, lang: str) -> Action:
    return Action("resolve", escalation_id, t("hd.resolve", lang))
