"""The helpdesk's Block Kit (bots/slack/helpdesk.py), checked with the fake Slack's validation;
and the manifest turning on what the helpdesk needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bots.slack.helpdesk import (
    actions_block,
    comment_view,
    handoff_message,
    home_view,
    mentions,
    sections,
    submitted_comment,
    with_blocks,
)
from kullm_core.helpdesk.actions import answer_actions, resolve_action
from kullm_core.helpdesk.settings import HelpdeskSettings
from tests.fakes.slack_api import FakeSlack
from tests.fakes.slack_blocks import blocks_error, view_error

JOB = "0123456789abcdef01234567"
MANIFEST = Path(__file__).parents[2] / "deploy" / "slack" / "manifest.yaml"


def buttons() -> list[dict[str, Any]]:
    return actions_block(answer_actions(JOB, "en", HelpdeskSettings()))


def test_the_answer_buttons_are_one_valid_actions_block() -> None:
    [block] = buttons()
    assert [e["action_id"] for e in block["elements"]] == [f"hd:up:{JOB}", f"hd:down:{JOB}",
                                                           f"hd:human:{JOB}"]
    assert blocks_error([block]) is None
    assert actions_block([]) == []
    assert actions_block(answer_actions(JOB, "ko", HelpdeskSettings(
        feedback=False, escalation=False))) == []


def test_buttons_follow_what_each_call_shows() -> None:
    md = {"channel": "C1", "text": "plain", "blocks": [{"type": "markdown", "text": "**md**"}]}
    assert with_blocks("chat.update", md, buttons())["blocks"] == [*md["blocks"], *buttons()]
    mrkdwn = {"channel": "C1", "text": "*bold* " + "가" * 5000, "blocks": []}
    out = with_blocks("chat.postMessage", mrkdwn, buttons())["blocks"]
    assert [b["type"] for b in out] == ["section", "section", "actions"]
    assert "".join(b["text"]["text"] for b in out[:2]) == mrkdwn["text"]
    assert blocks_error(out) is None
    stop = {"channel": "C1", "ts": "1.2", "markdown_text": "끝"}
    assert with_blocks("chat.stopStream", stop, buttons()) == stop | {"blocks": buttons()}
    assert with_blocks("chat.stopStream", stop | {"blocks": json.dumps([])},
                       buttons())["blocks"] == buttons()


def test_sections_cut_at_lines_under_slacks_limit() -> None:
    text = ("한 줄입니다\n" * 1000).strip()
    parts = sections(text)
    assert all(len(p["text"]["text"]) <= 3000 for p in parts)
    assert "".join(p["text"]["text"] for p in parts) == text
    assert sections("") == []


def test_hand_off_comment_modal_and_home_are_valid() -> None:
    assert mentions(["S0HELP", "U0ONE", ""]) == "<!subteam^S0HELP> <@U0ONE>"
    msg = handoff_message("🙋 help <@U0ONE>", resolve_action("ab" * 8, "ko"))
    assert blocks_error(msg["blocks"]) is None and msg["text"].startswith("🙋")
    assert [e["action_id"] for e in msg["blocks"][-1]["elements"]] == ["hd:res:" + "ab" * 8]
    assert [b["type"] for b in handoff_message("done", None)["blocks"]] == ["section"]
    for lang in ("ko", "en"):
        view = comment_view(lang, {"job": JOB})
        assert view_error(view, "modal") is None
        assert json.loads(view["private_metadata"]) == {"job": JOB}
    fake = FakeSlack()
    opened = {"user": "U1", "view": comment_view("ko", {"job": JOB}), "id": "V1"}
    assert submitted_comment(fake.submission_payload(opened, "느려요")["view"]) == "느려요"
    assert submitted_comment(fake.submission_payload(opened, "")["view"]) == ""
    home = home_view("통계", "a | b\n" * 900, monospace=True)
    assert view_error(home, "home") is None
    assert all(b["text"]["text"].startswith("```") for b in home["blocks"][1:])


def test_the_manifest_turns_on_what_the_helpdesk_needs() -> None:
    m = yaml.safe_load(MANIFEST.read_text())
    assert m["features"]["app_home"]["home_tab_enabled"] is True
    assert m["settings"]["interactivity"]["is_enabled"] is True
    assert "app_home_opened" in m["settings"]["event_subscriptions"]["bot_events"]
    assert {"usergroups:read", "chat:write", "commands"} <= set(m["oauth_config"]["scopes"]["bot"])
