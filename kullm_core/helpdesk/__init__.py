"""The team helpdesk, platform-neutral: feedback on answers, escalation to a person,
per-channel modes and usage statistics. Adapters show it with their own widgets (Slack Block
Kit, Telegram inline keyboards) through `kullm_core.helpdesk.actions`.

Kept free of imports here: `kullm_core.settings` imports `kullm_core.helpdesk.settings`.
"""
