"""The helpdesk's actions as an inline keyboard (pure)."""

from __future__ import annotations

from bots.telegram.keyboard import CALLBACK_MAX, inline_keyboard, markup_key
from kullm_core.helpdesk.actions import Action, answer_actions, parse_action
from kullm_core.helpdesk.settings import HelpdeskSettings


def test_one_row_whose_callback_data_fits_telegram() -> None:
    job = "ab" * 12
    markup = inline_keyboard(answer_actions(job, "en", HelpdeskSettings()))
    assert markup is not None
    [row] = markup.inline_keyboard
    assert [(b.text, b.callback_data) for b in row] == [
        ("👍", f"hd:up:{job}"), ("👎", f"hd:down:{job}"), ("🙋 Ask a person", f"hd:human:{job}")]
    assert all(len(str(b.callback_data).encode()) <= CALLBACK_MAX for b in row)
    assert [parse_action(str(b.callback_data)) for b in row] == [
        ("up", job), ("down", job), ("human", job)]


def test_no_actions_no_keyboard_and_an_id_too_long_is_left_out() -> None:
    assert inline_keyboard([]) is None
    assert markup_key(None) == ()
    assert inline_keyboard([Action("up", "f" * 64, "👍")]) is None
    off = HelpdeskSettings(feedback=False, escalation=False)
    assert inline_keyboard(answer_actions("ab" * 12, "ko", off)) is None
