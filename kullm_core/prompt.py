"""KULLM3 prompts: the model's own chat template, the fixed system prompt, history fitting.

Everything the model sees is built here, so the engines only generate.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kullm_core.errors import UserFacingError
from kullm_core.settings import GenerationSettings
from kullm_core.text_clean import clean_name
from kullm_core.wire import Quoted, Turn

log = logging.getLogger(__name__)

WORD_JOINER = "\u2060"
# Plain text to the tokenizer, but structure to the model: break them visibly-invisibly.
TEMPLATE_MARKERS = ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")


def _break(marker: str) -> str:
    cut = 2 if marker.startswith("<<") else 1
    return marker[:cut] + WORD_JOINER + marker[cut:]


def sanitize(text: str, special_tokens: tuple[str, ...] = ("<s>", "</s>", "<unk>")) -> str:
    """Make user or history text unable to act as template markers or control tokens.

    Control tokens are escaped as text too (not only by the tokenizer's own sanitizing), so the
    same protection holds when a remote server tokenizes (the `openai` engine).
    """
    for token in sorted({*special_tokens, *TEMPLATE_MARKERS}, key=len, reverse=True):
        if token and token in text:
            text = text.replace(token, _break(token))
    return text


Speaker = tuple[str, str]
"""(user id, display name) of the author of the new message."""

_LINE_BREAKS = re.compile(r"\r\n|[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")


def speaker_names(speakers: list[Speaker]) -> dict[str, str]:
    """One clean, distinct display name per user id (a name already taken by another user
    gets that user's id appended, so nobody can appear under someone else's name)."""
    names: dict[str, str] = {}
    taken: dict[str, str] = {}
    given: dict[str, str] = {}
    for uid, raw in speakers:  # a person's latest non-empty name (earlier turns may have none)
        if clean_name(raw) or uid not in given:
            given[uid] = raw
    for uid, _ in speakers:
        if uid in names:
            continue
        raw = given[uid]
        name = clean_name(raw) or clean_name(uid) or "user"
        if taken.get(name.casefold(), uid) != uid:
            name = f"{name} #{clean_name(uid)}"
        taken.setdefault(name.casefold(), uid)
        names[uid] = name
    return names


def quote_speaker(name: str, text: str, names: list[str]) -> str:
    """`name: text` on one line that no text can break out of: line breaks are written as
    `\\n`, and a speaker's `Name:` inside the text is escaped (`Name\\:`), so a message can
    never show a line, or a line start, of another speaker."""
    one_line = _LINE_BREAKS.sub(lambda _m: "\\n", text)
    for other in sorted(set(names), key=len, reverse=True):
        pattern = re.compile(re.escape(other) + r"(\s*)([:：])", re.IGNORECASE)
        one_line = pattern.sub(lambda m: m.group(0)[: -len(m.group(2))] + "\\" + m.group(2),
                               one_line)
    return f"{name}: {one_line}"


_PROBE_USER = "kullm-probe-user-3f9a"
_PROBE_SYSTEM = "kullm-probe-system-3f9a"


def template_default_system(tokenizer: Any) -> str | None:
    """The system prompt the tokenizer's chat template adds to a conversation that has none
    (None: it adds none, or it cannot render a system message).

    Found by rendering one user turn with and without a probe system message: where the
    probe sits in the second rendering, the first carries the template's default.
    """
    def render(messages: list[dict[str, str]]) -> str:
        return str(tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True))

    user = {"role": "user", "content": _PROBE_USER}
    try:
        bare = render([user])
        with_probe = render([{"role": "system", "content": _PROBE_SYSTEM}, user])
    except Exception:  # a template that rejects a system turn (jinja raise_exception)
        log.debug("chat template: no system turn", exc_info=True)
        return None
    at = with_probe.find(_PROBE_SYSTEM)
    if at < 0:
        return None
    head, tail = with_probe[:at], with_probe[at + len(_PROBE_SYSTEM):]
    if len(bare) <= len(head) + len(tail) or not bare.startswith(head) or not bare.endswith(tail):
        return None
    default = bare[len(head): len(bare) - len(tail)]
    return default if default.strip() else None


@dataclass(frozen=True)
class BuiltPrompt:
    ids: list[int]
    messages: list[dict[str, str]]
    dropped_turns: int

    @property
    def tokens(self) -> int:
        return len(self.ids)


class PromptBuilder:
    """Renders system prompt + history + the new message with the tokenizer's chat template,
    dropping the oldest whole turns until it fits `context_window - max_new_tokens`.

    `template_default`: send no system message when the model's own template supplies a
    default system prompt (KULLM3's does): the ids are then exactly those of the model card's
    usage, `apply_chat_template(turns, add_generation_prompt=True)`. A template without a
    default gets `system_prompt` explicitly. Otherwise `system_prompt` is always sent (`""`:
    an empty system message).
    """

    def __init__(
        self, tokenizer: Any, system_prompt: str, context_window: int, max_new_tokens: int,
        *, template_default: bool = False,
    ) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template")
        self.tok = tokenizer
        self.template_system = template_default_system(tokenizer) if template_default else None
        self.system_prompt = system_prompt
        self.explicit = self.template_system is None
        if template_default and self.explicit:
            log.info("the chat template has no default system prompt: sending it explicitly")
        self.context_window = context_window
        self.max_new_tokens = max_new_tokens
        specials = tuple(str(s) for s in getattr(tokenizer, "all_special_tokens", []) or [])
        self.special_tokens = specials or ("<s>", "</s>", "<unk>")
        params = inspect.signature(tokenizer.apply_chat_template).parameters
        self._sanitize_kw = "sanitize_control_tokens" in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
        )

    @classmethod
    def from_settings(cls, tokenizer: Any, g: GenerationSettings) -> PromptBuilder:
        """The builder `generation.system_prompt_mode` asks for."""
        mode = g.system_prompt_mode
        text = "" if mode == "none" else g.system_prompt
        return cls(tokenizer, text, g.context_window, g.max_new_tokens,
                   template_default=mode == "template")

    @property
    def effective_system_prompt(self) -> str:
        """The system prompt the model sees (the template's default, or the one sent)."""
        return self.system_prompt if self.template_system is None else self.template_system

    @property
    def budget(self) -> int:
        return self.context_window - self.max_new_tokens

    def messages(
        self, history: list[Turn], text: str, speaker: Speaker | None = None,
        context: Sequence[Quoted] = (),
    ) -> list[dict[str, str]]:
        """Chat messages. In a conversation several people share (a helpdesk thread), each
        user message is prefixed with its author's name so the model knows who asks.

        `context`: messages of other people the bot was not asked about (the earlier human
        messages of a Slack thread, the message a Telegram question replies to). Each goes,
        quoted under its author's name, into the user message that followed it in time."""
        people = [*((t.user_id, t.user_name) for t in history),
                  *((q.user_id, q.name) for q in context)]
        shared = speaker is not None and (
            bool(context) or len({uid for uid, _ in people} | {speaker[0]}) > 1)
        names: dict[str, str] = {}
        if shared and speaker is not None:
            names = speaker_names([*people, speaker])
        known = list(names.values())
        pending = sorted(context, key=lambda q: q.at)

        def said(uid: str, body: str, until: float | None) -> str:
            nonlocal pending
            if not shared:
                return body
            before = [q for q in pending if until is None or q.at <= until]
            pending = [q for q in pending if q not in before]
            lines = [quote_speaker(names[q.user_id], q.text, known) for q in before]
            return "\n".join([*lines, quote_speaker(names[uid], body, known)])

        msgs = [{"role": "system", "content": self.system_prompt}] if self.explicit else []
        for turn in history:
            msgs.append({"role": "user", "content": sanitize(
                said(turn.user_id, turn.user, turn.at), self.special_tokens)})
            msgs.append(
                {"role": "assistant", "content": sanitize(turn.assistant, self.special_tokens)}
            )
        if speaker is not None:
            text = said(speaker[0], text, None)
        msgs.append({"role": "user", "content": sanitize(text, self.special_tokens)})
        return msgs

    def render_ids(self, messages: list[dict[str, str]]) -> list[int]:
        kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": True,
                                  "return_dict": False}
        if self._sanitize_kw:
            kwargs["sanitize_control_tokens"] = True
        ids = self.tok.apply_chat_template(messages, **kwargs)
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return [int(i) for i in ids]

    def build(
        self, history: list[Turn], text: str, speaker: Speaker | None = None,
        context: Sequence[Quoted] = (),
    ) -> BuiltPrompt:
        """Fit and render: the oldest turns and quoted messages are dropped first, in time
        order, the new message never. Raises `UserFacingError('too_long')` if the new
        message alone (with the system prompt) cannot fit."""
        alone = self.render_ids(self.messages([], text))
        if len(alone) > self.budget:
            raise UserFacingError(
                "too_long", f"prompt needs {len(alone)} tokens, budget {self.budget}",
                tokens=len(alone), limit=self.budget,
            )
        items: list[Turn | Quoted] = sorted([*history, *context], key=lambda x: x.at)

        def kept(drop: int) -> tuple[list[Turn], list[Quoted]]:
            rest = items[drop:]
            return ([x for x in history if x in rest],
                    [q for q in context if q in rest])

        # Fewest dropped items that fit: token count only shrinks as items are dropped.
        lo, hi = 0, len(items)
        best: list[int] | None = alone if not items else None
        while lo < hi:
            mid = (lo + hi) // 2
            turns, quoted = kept(mid)
            ids = self.render_ids(self.messages(turns, text, speaker, quoted))
            if len(ids) <= self.budget:
                hi, best = mid, ids
            else:
                lo = mid + 1
        turns, quoted = kept(lo)
        if best is None:  # nothing of the history fits beside the new message
            best, turns, quoted = alone, [], []
        dropped = len(history) - len(turns)
        if lo:
            log.debug("dropped %d oldest turns and %d quoted messages to fit %d tokens",
                      dropped, len(context) - len(quoted), self.budget)
        return BuiltPrompt(best, self.messages(turns, text, speaker, quoted), dropped)
