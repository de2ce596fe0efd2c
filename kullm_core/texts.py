"""User-facing texts in Korean (default) and English, shared by every adapter."""

from __future__ import annotations

from kullm_core.wire import ErrorEvent

_TEXTS: dict[str, dict[str, str]] = {
    "ko": {
        "error.busy": "지금 요청이 많아 처리할 수 없습니다 (대기 {waiting}건). 잠시 후 다시 시도해 주세요.",
        "error.too_long": "메시지가 너무 길어 모델의 문맥 창에 들어가지 않습니다. 더 짧게 나누어 보내 주세요.",
        "error.failed": "죄송합니다. 답변을 만드는 중 문제가 생겼습니다. 다시 시도해 주세요.",
        "error.timeout": "답변 생성 시간이 초과되었습니다. 질문을 짧게 하거나 다시 시도해 주세요.",
        "error.internal": "죄송합니다. 내부 오류가 발생했습니다. 잠시 후 다시 시도해 주세요.",
        "error.bad_input": "텍스트 메시지만 보낼 수 있습니다. 빈 메시지는 처리할 수 없습니다.",
        "error.rate_limited": "요청이 너무 잦습니다. {retry_after}초 후에 다시 물어봐 주세요.",
        "error.quota": "오늘 사용량({limit} 토큰)을 모두 썼습니다. {retry_after}초 후(UTC 자정)에 다시 이용할 수 있습니다.",
        "error.forbidden": "죄송합니다. 이 봇을 사용할 권한이 없습니다. 관리자에게 문의해 주세요.",
        "queued": "⏳ 대기 중입니다 (#{position}).",
        "queued_behind": "⏳ 이전 답변이 끝나면 이어서 답하겠습니다.",
        "warming_up": "⏳ 봇이 막 시작되어 모델을 불러오는 중입니다. 준비되면 바로 답하겠습니다.",
        "stopped": "⏹ (생성 중단됨)",
        "truncated": "✂️ (최대 길이에 도달해 답변이 잘렸습니다)",
        "timed_out": "⌛ (시간 초과로 답변이 중단되었습니다)",
        "start": "안녕하세요! 고려대학교 NLP&AI 연구실의 한국어 언어 모델 KULLM3(구름)입니다. "
        "무엇이든 물어보세요.\n\n⚠️ 언어 모델은 사실과 다른 내용(환각)을 말할 수 있습니다. "
        "중요한 정보는 꼭 확인해 주세요.",
        "help": "/reset 새 대화 시작\n/stop 생성 중인 답변 중단\n/retry 마지막 답변 다시 생성\n"
        "/forget 저장된 내 대화 모두 삭제\n/help 도움말",
        "reset": "🧹 새 대화를 시작합니다.",
        "nothing_to_stop": "생성 중인 답변이 없습니다.",
        "stop_requested": "⏹ 답변 생성을 중단합니다.",
        "nothing_to_retry": "다시 생성할 답변이 없습니다.",
        "forget_confirm": "저장된 대화 기록을 모두 삭제할까요? 되돌릴 수 없습니다.",
        "forget_yes": "삭제",
        "forget_no": "취소",
        "forgot": "🗑 대화 기록 {turns}개를 삭제했습니다.",
        "forget_cancelled": "삭제를 취소했습니다.",
        "text_only": "죄송합니다. 지금은 텍스트 메시지만 이해할 수 있습니다.",
        "empty_mention": "무엇을 도와드릴까요? 멘션과 함께 질문을 적어 주세요.",
        "thinking": "생각 중…",
    },
    "en": {
        "error.busy": "Too many requests right now ({waiting} waiting). Please try again shortly.",
        "error.too_long": "Your message is too long for the model's context window. "
        "Please split it into shorter messages.",
        "error.failed": "Sorry, something went wrong while writing the answer. Please try again.",
        "error.timeout": "The answer took too long. Please ask again or shorten the question.",
        "error.internal": "Sorry, an internal error occurred. Please try again later.",
        "error.bad_input": "Only text messages are supported, and they cannot be empty.",
        "error.rate_limited": "You are asking too often. Please try again in {retry_after} s.",
        "error.quota": "You have used today's quota ({limit} tokens). "
        "It resets in {retry_after} s (midnight UTC).",
        "error.forbidden": "Sorry, you are not allowed to use this bot. Please ask an admin.",
        "queued": "⏳ In line (#{position}).",
        "queued_behind": "⏳ I'll answer this after the current reply.",
        "warming_up": "⏳ The bot has just started and is loading its model; I'll answer as soon as it is ready.",
        "stopped": "⏹ (stopped)",
        "truncated": "✂️ (the answer reached the length limit)",
        "timed_out": "⌛ (the answer was cut off: time limit)",
        "start": "Hello! I am KULLM3 (구름), the Korean language model of Korea University's "
        "NLP&AI Lab. Ask me anything.\n\n⚠️ Language models can state things that are not true "
        "(hallucinations). Please check important facts.",
        "help": "/reset start a new conversation\n/stop stop the answer being written\n"
        "/retry regenerate the last answer\n/forget delete everything stored about you\n"
        "/help this help",
        "reset": "🧹 Starting a new conversation.",
        "nothing_to_stop": "No answer is being written.",
        "stop_requested": "⏹ Stopping the answer.",
        "nothing_to_retry": "There is no answer to regenerate.",
        "forget_confirm": "Delete all of your stored conversations? This cannot be undone.",
        "forget_yes": "Delete",
        "forget_no": "Cancel",
        "forgot": "🗑 Deleted {turns} stored turns.",
        "forget_cancelled": "Nothing was deleted.",
        "text_only": "Sorry, I can only understand text messages for now.",
        "empty_mention": "How can I help? Write your question together with the mention.",
        "thinking": "Thinking…",
    },
}


def lang_of(code: str | None) -> str:
    """Map a platform locale (`en-US`, `ko`, None) to a supported language; Korean default."""
    if code and code.lower().startswith("en"):
        return "en"
    return "ko"


def t(key: str, lang: str | None = "ko", **params: object) -> str:
    return t_from(_TEXTS, key, lang, **params)


def t_from(
    tables: dict[str, dict[str, str]], key: str, lang: str | None = "ko", **params: object
) -> str:
    """Look `key` up in an adapter's own `tables` (ko/en), then in the shared texts."""
    table = tables.get(lang_of(lang), {})
    text = table.get(key) or tables.get("ko", {}).get(key)
    if text is None:
        if tables is _TEXTS:
            raise KeyError(key)
        return t(key, lang, **params)
    try:
        return text.format(**params)
    except (KeyError, IndexError):
        return text


def error_text(event: ErrorEvent, lang: str | None = "ko") -> str:
    return t(f"error.{event.kind}", lang, **event.params)


def finish_note(finish_reason: str, lang: str | None = "ko") -> str:
    """The mark appended to a reply that did not end normally ('' when it did)."""
    return {
        "cancelled": t("stopped", lang),
        "length": t("truncated", lang),
        "timeout": t("timed_out", lang),
    }.get(finish_reason, "")
