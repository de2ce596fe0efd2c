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
        "hd.up": "👍",
        "hd.down": "👎",
        "hd.human": "🙋 사람에게 문의",
        "hd.resolve": "✅ 해결됨",
        "hd.rated": "평가해 주셔서 감사합니다 ({rating}).",
        "hd.rated_again": "평가를 {rating}(으)로 바꿨습니다.",
        "hd.comment_prompt": "무엇이 아쉬웠는지 알려 주시면 개선에 도움이 됩니다. 다음 메시지로 의견을 보내 주세요 (건너뛰려면 /skip).",
        "hd.comment_title": "답변 의견",
        "hd.comment_label": "무엇이 아쉬웠나요?",
        "hd.comment_saved": "의견을 저장했습니다. 감사합니다.",
        "hd.comment_empty": "빈 의견은 저장하지 않았습니다.",
        "hd.comment_skipped": "의견 없이 평가만 저장했습니다.",
        "hd.gone": "이 답변은 더 이상 없습니다 (삭제되었거나 보관 기간이 지났습니다).",
        "hd.no_escalation": "이 봇에서는 사람에게 문의하기가 꺼져 있습니다.",
        "hd.handoff": "🙋 {name} 님이 사람의 도움을 요청했습니다. {mentions}",
        "hd.handoff_question": "질문: {question}",
        "hd.handoff_link": "대화: {link}",
        "hd.called": "🙋 담당자를 불렀습니다. 해결될 때까지 이 대화에서는 봇이 답하지 않습니다.",
        "hd.called_answering": "🙋 담당자를 불렀습니다.",
        "hd.already_open": "이미 담당자를 불렀습니다. 곧 답변드릴 거예요.",
        "hd.resolved": "✅ {name} 님이 해결됨으로 표시했습니다. 봇이 다시 답합니다.",
        "hd.already_resolved": "이미 해결된 문의입니다.",
        "hd.not_responder": "담당자나 관리자만 해결됨으로 표시할 수 있습니다.",
        "hd.nothing_open": "이 대화에는 열린 문의가 없습니다.",
        "hd.admins_only": "관리자만 사용할 수 있는 명령입니다.",
        "hd.mode_set": "이 채널 설정: {config}",
        "hd.usage": "오늘 사용량: {used} / {limit} 토큰 · 최근 1분 요청 {requests} / {per_minute}회",
        "hd.usage_unlimited": "오늘 사용량: {used} 토큰 (제한 없음)",
        "hd.requests": "최근 1분 요청 {requests} / {per_minute}회",
        "hd.quota_default": "기본값 ({n}, 0은 제한 없음)",
        "hd.quota_set": "{user} 님의 하루 토큰 한도를 {limit}(으)로 정했습니다.",
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
        "hd.up": "👍",
        "hd.down": "👎",
        "hd.human": "🙋 Ask a person",
        "hd.resolve": "✅ Resolved",
        "hd.rated": "Thanks for your rating ({rating}).",
        "hd.rated_again": "Your rating is now {rating}.",
        "hd.comment_prompt": "What was missing? Send your comment as your next message (or /skip).",
        "hd.comment_title": "Feedback",
        "hd.comment_label": "What was missing?",
        "hd.comment_saved": "Comment saved. Thank you.",
        "hd.comment_empty": "An empty comment was not saved.",
        "hd.comment_skipped": "Your rating was saved without a comment.",
        "hd.gone": "This answer no longer exists (it was deleted or has expired).",
        "hd.no_escalation": "Asking a person is turned off for this bot.",
        "hd.handoff": "🙋 {name} asks for help from a person. {mentions}",
        "hd.handoff_question": "Question: {question}",
        "hd.handoff_link": "Conversation: {link}",
        "hd.called": "🙋 A person has been called. The bot stays quiet in this conversation until it is resolved.",
        "hd.called_answering": "🙋 A person has been called.",
        "hd.already_open": "A person has already been called; they will answer soon.",
        "hd.resolved": "✅ {name} marked this as resolved. The bot answers again.",
        "hd.already_resolved": "This request is already resolved.",
        "hd.not_responder": "Only responders and admins can mark this as resolved.",
        "hd.nothing_open": "Nothing is waiting for a person in this conversation.",
        "hd.admins_only": "Only admins can use this command.",
        "hd.mode_set": "This channel: {config}",
        "hd.usage": "Today: {used} / {limit} tokens · last minute: {requests} / {per_minute} requests",
        "hd.usage_unlimited": "Today: {used} tokens (no limit)",
        "hd.requests": "last minute: {requests} / {per_minute} requests",
        "hd.quota_default": "the default ({n}; 0 is unlimited)",
        "hd.quota_set": "{user}'s daily token limit is now {limit}.",
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
