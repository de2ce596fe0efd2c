"""The helpdesk's buttons as Telegram inline keyboards (`kullm_core.helpdesk.actions`).

An action's id (`hd:up:<job>`) is the button's `callback_data` (Telegram allows 1-64 bytes);
the answer's buttons sit in one row under its last message part.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from kullm_core.helpdesk.actions import Action

CALLBACK_MAX = 64
"""Telegram's limit on `callback_data`, in bytes."""


def inline_keyboard(actions: Sequence[Action]) -> InlineKeyboardMarkup | None:
    """One row of buttons (None without actions); an id too long for Telegram is left out."""
    row = [InlineKeyboardButton(a.label, callback_data=a.id) for a in actions
           if len(a.id.encode()) <= CALLBACK_MAX]
    return InlineKeyboardMarkup([row]) if row else None


def markup_key(markup: InlineKeyboardMarkup | None) -> Hashable:
    """What a keyboard shows, for comparing a message's content (`()` for none)."""
    if markup is None:
        return ()
    return tuple(tuple((b.text, b.callback_data) for b in row) for row in markup.inline_keyboard)
