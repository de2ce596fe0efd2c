"""Telegram-only texts (Korean default, English), on top of the shared `kullm_core.texts`."""

from __future__ import annotations

from kullm_core.texts import t_from

COMMANDS = ("start", "help", "ask", "reset", "stop", "retry", "forget")

_TEXTS: dict[str, dict[str, str]] = {
    "ko": {
        "cmd.start": "시작 인사와 안내",
        "cmd.help": "도움말",
        "cmd.ask": "질문하기 (그룹에서: /ask 질문)",
        "cmd.reset": "새 대화 시작",
        "cmd.stop": "생성 중인 답변 중단",
        "cmd.retry": "마지막 답변 다시 생성",
        "cmd.forget": "저장된 내 대화 기록 모두 삭제",
        "help_group": "그룹에서는 @{bot} 멘션, 제 메시지에 답장, 또는 /ask 질문 으로 물어보세요.",
        "retry_busy": "지금 답변을 만드는 중입니다. 답변이 끝난 뒤에 /retry 를 보내 주세요.",
        "empty_reply": "(빈 답변)",
        "ask_usage": "/ask 뒤에 질문을 적어 주세요. 예: /ask 서울의 명소를 알려줘",
        "forget_not_yours": "/forget 을 보낸 사람만 누를 수 있습니다.",
        "too_many_pending": "⏳ 아직 답하지 않은 질문이 {pending}개 있습니다. 답변이 끝난 뒤에 다시 보내 주세요.",
    },
    "en": {
        "cmd.start": "Greeting and how to use the bot",
        "cmd.help": "Help",
        "cmd.ask": "Ask a question (in groups: /ask question)",
        "cmd.reset": "Start a new conversation",
        "cmd.stop": "Stop the answer being written",
        "cmd.retry": "Regenerate the last answer",
        "cmd.forget": "Delete everything stored about you",
        "help_group": "In groups, mention @{bot}, reply to one of my messages, or use "
        "/ask question.",
        "retry_busy": "I am still writing an answer. Send /retry once it is finished.",
        "empty_reply": "(empty answer)",
        "ask_usage": "Write your question after /ask, e.g. /ask What should I see in Seoul?",
        "forget_not_yours": "Only the person who sent /forget can press this.",
        "too_many_pending": "⏳ {pending} of your questions are still waiting for an answer. Please send this again once they are answered.",
    },
}


def t(key: str, lang: str | None = "ko", **params: object) -> str:
    """A Telegram text, or the shared one of the same key."""
    return t_from(_TEXTS, key, lang, **params)
