"""The platforms' limits as buckets (`kullm_core.scopes`)."""

from __future__ import annotations

from kullm_core.scopes import SlackScopes, TelegramScopes


def test_scopes_follow_the_settings() -> None:
    from kullm_core.settings import load_settings

    s = load_settings(None, telegram={"group_messages_per_minute": 10},
                      slack={"updates_per_minute": 20})
    group = TelegramScopes.from_settings(s.telegram).send(-1)
    assert [(b.name, b.limit) for b in group][:2] == [("chat:-1", 1), ("group:-1", 10)]
    assert group[0].period_s == 6.0  # paced: 10 per minute, evenly
    [update] = SlackScopes.from_settings(s.slack).call("T1", "chat.update", "C1")
    assert (update.name, update.limit, update.period_s) == ("m:T1:chat.update", 20, 60.0)


def test_slack_minute_limits_spent_in_shorter_windows_never_exceed_the_minute() -> None:
    scopes = SlackScopes(updates_per_minute=50, window_s=10.0)
    [update] = scopes.call("T1", "chat.update")
    assert (update.limit, update.period_s) == (8, 10.0)  # 6 windows x 8 <= 50 per minute
    [append] = scopes.call("T1", "chat.appendStream")
    [stop] = scopes.call("T1", "chat.stopStream")
    assert append == stop, "appendStream and stopStream share the stream budget"
    [rare] = SlackScopes(updates_per_minute=3, window_s=10.0).call("T1", "chat.update")
    assert (rare.limit, rare.period_s) == (3, 60.0)  # too few to split: the minute stays
