"""`[limits]`: who may ask, how often, how much; every id qualified by its platform."""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from kullm_core.settings_base import Section

_USER_FORMS = (r"tg:\d+", r"tg:@[A-Za-z0-9_]{3,32}", r"slack:[A-Z0-9]+:[A-Z0-9]+", r"cli:\S+")
_ADMIN_FORMS = (r"tg:\d+", r"slack:[A-Z0-9]+:[A-Z0-9]+", r"cli:\S+")
_CHAT_FORMS = (r"tg:-?\d+", r"slack:[A-Z0-9]+:[A-Z0-9]+", r"cli:\S+")
_WORKSPACE_FORMS = (r"slack:[A-Z0-9]+",)
_HOW = {
    "allowed_users": "a Telegram user as tg:<numeric id> or tg:@username, a Slack user as "
    "slack:<team id>:<user id> (e.g. slack:T0123ABCD:U0456EFGH)",
    "admins": "a Telegram admin as tg:<numeric id> (not an @username: usernames can change "
    "hands), a Slack admin as slack:<team id>:<user id> (e.g. slack:T0123ABCD:U0456EFGH)",
    "allowed_chats": "a Telegram chat as tg:<chat id> (e.g. tg:-1001234567890), a Slack "
    "channel as slack:<team id>:<channel id> (e.g. slack:T0123ABCD:C0789IJKL)",
    "allowed_workspaces": "a Slack workspace as slack:<team id> (e.g. slack:T0123ABCD)",
}


def _qualified(field: str, forms: tuple[str, ...], values: list[str]) -> list[str]:
    out = []
    for raw in values:
        v = raw.strip()
        if not any(re.fullmatch(f, v) for f in forms):
            raise ValueError(
                f"limits.{field}: {raw!r} is not a platform-qualified id; write {_HOW[field]}"
            )
        out.append(v.lower() if v.startswith("tg:@") else v)  # usernames are case-insensitive
    return out


class LimitSettings(Section):
    """Access and fairness, shared by every platform.

    Every id names its platform (and Slack workspace), so an id of one platform can never
    match a user of another: `tg:123456789`, `tg:@username`, `slack:T0123ABCD:U0456EFGH`;
    chats `tg:-1001234567890`, `slack:T0123ABCD:C0789IJKL`; workspaces `slack:T0123ABCD`.
    """

    allowed_users: list[str] = Field(default_factory=list)
    """Users allowed to talk to the bot (ids or Telegram @usernames); empty = everyone."""
    allowed_chats: list[str] = Field(default_factory=list)
    """Telegram chats and Slack channels the bot answers in; empty = every chat."""
    allowed_workspaces: list[str] = Field(default_factory=list)
    """Slack workspaces; empty = every workspace."""
    admins: list[str] = Field(default_factory=list)
    """Users (ids only) exempt from rate limits and quotas, and always allowed."""
    requests_per_minute: int = Field(default=10, ge=0)
    """0 = unlimited."""
    daily_tokens: int = Field(default=50000, ge=0)
    """Generated tokens per user per UTC day; 0 = unlimited."""
    refusal_interval_s: float = Field(default=10.0, ge=0)
    """At most one refusal (not allowed, too often, busy) per chat in this long; the rest are
    dropped and counted in the log, so a flood costs one message, not one per message."""
    max_pending_per_user: int = Field(default=5, ge=0)
    """Questions one user may have waiting or being answered in one chat at once (per adapter
    process); more get a refusal. 0 = no cap."""

    @model_validator(mode="after")
    def _platform_qualified(self) -> LimitSettings:
        self.allowed_users = _qualified("allowed_users", _USER_FORMS, self.allowed_users)
        self.admins = _qualified("admins", _ADMIN_FORMS, self.admins)
        self.allowed_chats = _qualified("allowed_chats", _CHAT_FORMS, self.allowed_chats)
        self.allowed_workspaces = _qualified("allowed_workspaces", _WORKSPACE_FORMS,
                                             self.allowed_workspaces)
        return self
