"""How the fake Telegram checks `reply_markup`, as Telegram does: an inline keyboard is rows of
buttons, each with a text and exactly one action, `callback_data` 1-64 bytes; a force reply
is `{"force_reply": true}` with an optional placeholder of at most 64 characters."""

from __future__ import annotations

from typing import Any

from tests.fakes.telegram_format import ApiError

CALLBACK_MAX_BYTES = 64
MAX_BUTTONS = 100
_BUTTON_ACTIONS = frozenset({
    "url", "callback_data", "web_app", "login_url", "switch_inline_query",
    "switch_inline_query_current_chat", "switch_inline_query_chosen_chat", "copy_text",
    "callback_game", "pay",
})


def check_reply_markup(markup: Any) -> None:
    """Refuse a `reply_markup` Telegram would refuse (the whole call fails)."""
    if markup is None:
        return
    if not isinstance(markup, dict):
        raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
    if "inline_keyboard" in markup:
        _check_inline(markup["inline_keyboard"])
    elif "force_reply" in markup:
        if markup["force_reply"] is not True:
            raise ApiError(400, "Bad Request: force_reply must be true")
        if len(str(markup.get("input_field_placeholder") or "")) > 64:
            raise ApiError(400, "Bad Request: input field placeholder is too long")
    elif "remove_keyboard" not in markup and "keyboard" not in markup:
        raise ApiError(400, "Bad Request: can't find field \"inline_keyboard\"")


def _check_inline(rows: Any) -> None:
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise ApiError(400, "Bad Request: field \"inline_keyboard\" of the InlineKeyboardMarkup "
                            "must be an Array of Arrays")
    buttons = [b for row in rows for b in row]
    if len(buttons) > MAX_BUTTONS:
        raise ApiError(400, "Bad Request: reply markup is too long")
    for b in buttons:
        if not isinstance(b, dict) or not str(b.get("text") or "").strip():
            raise ApiError(400, "Bad Request: can't parse inline keyboard button: text is empty")
        actions = _BUTTON_ACTIONS.intersection(b)
        if len(actions) != 1:
            raise ApiError(400, "Bad Request: can't parse inline keyboard button: Text buttons "
                                "are unallowed in the inline keyboard")
        if "callback_data" in b:
            data = str(b["callback_data"]).encode()
            if not 1 <= len(data) <= CALLBACK_MAX_BYTES:
                raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")


def buttons(markup: dict[str, Any] | None) -> list[tuple[str, str]]:
    """An inline keyboard's (text, callback_data) pairs, row by row ([] without one)."""
    rows = (markup or {}).get("inline_keyboard") or []
    return [(str(b.get("text")), str(b.get("callback_data") or "")) for row in rows for b in row]
