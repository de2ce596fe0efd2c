"""Per-channel behaviour: answer every message, only when mentioned, or never; answer only
questions; who responds to escalations. `helpdesk.channels` sets it, an admin's command
changes it in Redis (no TTL: it is configuration), every replica reads it from there."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from redis.asyncio import Redis

from kullm_core.helpdesk.settings import HelpdeskSettings
from kullm_core.keys import Keys
from kullm_core.wire import ChannelConfig

log = logging.getLogger(__name__)

_QUESTION_END = re.compile(
    r"(\?|？|까|나요|가요|죠|지요|니|냐|래|할래|을까|ㄹ까|인가|는지|나|요\s*\?)\s*[.!~]*\s*$")
_QUESTION_WORDS = re.compile(
    r"(어떻게|왜|무엇|뭐|뭔가|어디|언제|누가|누구|얼마|어느|몇|알려|가르쳐|설명해|방법)")
_ENGLISH_START = re.compile(
    r"^(how|why|what|where|when|who|which|can|could|would|does|do|is|are|should|help)\b",
    re.IGNORECASE)


def looks_like_question(text: str) -> bool:
    """A cheap heuristic for `questions_only` channels: a question mark or a Korean question
    ending, or a question word / request ("알려 주세요", "how")."""
    stripped = text.strip()
    if not stripped:
        return False
    return bool(_QUESTION_END.search(stripped) or _QUESTION_WORDS.search(stripped)
                or _ENGLISH_START.search(stripped))


@dataclass(frozen=True)
class Seen:
    """A message as the channel policy needs it."""

    dm: bool
    mentioned: bool
    top_level: bool
    """Not inside a thread (Slack) / not a reply (Telegram)."""
    text: str
    in_bot_thread: bool = False
    """A reply in a thread or chain the bot already answers in."""


def should_answer(cfg: ChannelConfig, msg: Seen) -> bool:
    """Whether the bot answers `msg` in a channel configured by `cfg`."""
    if msg.dm:
        return True
    if cfg.mode == "off":
        return False
    if msg.mentioned:
        return True
    if cfg.mode == "all" and (msg.top_level or msg.in_bot_thread):
        return not cfg.questions_only or looks_like_question(msg.text)
    return False


class ChannelModes:
    """Reads and changes `ChannelConfig`s. Channels are qualified ids (`slack:T1:C1`,
    `tg:-100123`)."""

    def __init__(self, redis: Redis, keys: Keys, settings: HelpdeskSettings) -> None:
        self.r = redis
        self.keys = keys
        self.s = settings

    def configured(self, channel: str) -> ChannelConfig:
        """What the settings say (without an admin's change)."""
        cfg = self.s.channels.get(channel)
        if cfg is not None:
            return cfg if cfg.responders else cfg.model_copy(
                update={"responders": list(self.s.responders)})
        return ChannelConfig(mode=self.s.default_mode, responders=list(self.s.responders))

    async def get(self, channel: str) -> ChannelConfig:
        raw = await self.r.get(self.keys.channel_config(channel))
        if raw:
            try:
                return ChannelConfig.model_validate_json(raw)
            except ValueError:
                log.warning("channel %s: stored config unreadable; using the settings", channel)
        return self.configured(channel)

    async def set(self, channel: str, cfg: ChannelConfig) -> None:
        await self.r.set(self.keys.channel_config(channel), cfg.dumps())

    async def clear(self, channel: str) -> None:
        """Back to what the settings say."""
        await self.r.delete(self.keys.channel_config(channel))


class ModeCommandError(ValueError):
    """An admin's channel command that could not be read; the text says why (English)."""


_BOOL = {"on": True, "yes": True, "true": True, "1": True,
         "off": False, "no": False, "false": False, "0": False}


def apply_command(cfg: ChannelConfig, args: list[str]) -> ChannelConfig | None:
    """An admin's change to a channel, from the words after the command:

    - ``mode all|mention|off``
    - ``questions on|off`` (answer only questions, in mode `all`)
    - ``escalated answer|silent`` (keep answering in escalated conversations, or not)
    - ``responders ID...`` (platform user ids or a Slack user group; none clears them)
    - ``handoff CHAT [TOPIC]`` (Telegram: forward escalations to a helpdesk group)
    - ``reset``: back to the settings (returns None)
    """
    if not args:
        raise ModeCommandError("usage: mode all|mention|off · questions on|off · "
                               "escalated answer|silent · responders ID... · handoff CHAT · reset")
    word, rest = args[0].lower(), args[1:]
    if word == "reset":
        return None
    if word == "mode" and len(rest) == 1 and rest[0] in ("all", "mention", "off"):
        return cfg.model_copy(update={"mode": rest[0]})
    if word == "questions" and len(rest) == 1 and rest[0].lower() in _BOOL:
        return cfg.model_copy(update={"questions_only": _BOOL[rest[0].lower()]})
    if word == "escalated" and len(rest) == 1 and rest[0] in ("answer", "silent"):
        return cfg.model_copy(update={"answer_when_escalated": rest[0] == "answer"})
    if word == "responders":
        return cfg.model_copy(update={"responders": [_bare_id(r) for r in rest]})
    if word == "handoff" and 1 <= len(rest) <= 2:
        return cfg.model_copy(update={"handoff_chat": rest[0],
                                      "handoff_thread": rest[1] if len(rest) > 1 else ""})
    raise ModeCommandError(f"cannot read {' '.join(args)!r}")


def _bare_id(word: str) -> str:
    """`<@U123>`, `<@U123|name>`, `<!subteam^S1|@team>`, `@U1`, `U1` -> the id."""
    m = re.fullmatch(r"<[@!](?:subteam\^)?([A-Z0-9]+)(?:\|[^>]*)?>", word)
    if m:
        return m.group(1)
    return word.lstrip("@")


def describe(cfg: ChannelConfig) -> str:
    """One line showing a channel's settings (English and Korean readers alike)."""
    parts = [f"mode={cfg.mode}", f"questions_only={'on' if cfg.questions_only else 'off'}",
             f"escalated={'answer' if cfg.answer_when_escalated else 'silent'}",
             "responders=" + (",".join(cfg.responders) or "-")]
    if cfg.handoff_chat:
        parts.append(f"handoff={cfg.handoff_chat}"
                     + (f"/{cfg.handoff_thread}" if cfg.handoff_thread else ""))
    return " · ".join(parts)
