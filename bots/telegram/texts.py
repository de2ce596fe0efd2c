"""Telegram-only texts (Korean default, English), on top of the shared `kullm_core.texts`."""

from __future__ import annotations

from kullm_core.texts import t_from

COMMANDS = ("start", "help", "ask", "reset", "stop", "retry", "forget", "human", "resolve",
            "usage")

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
        "cmd.human": "사람(담당자)에게 문의",
        "cmd.resolve": "담당자 문의를 해결됨으로 표시 (담당자, 관리자)",
        "cmd.usage": "오늘 내 사용량과 한도",
        "help_helpdesk": "답변 아래 👍 / 👎 로 평가하고 (👎 뒤 다음 메시지가 의견, /skip 건너뛰기), "
        "🙋 또는 /human [내용] 으로 담당자를 부를 수 있습니다. /resolve 해결됨 표시 (담당자, 관리자) · "
        "/usage 오늘 사용량",
        "help_admin": "관리자: /stats 통계 · /mode all|mention|off 이 그룹에서 답하는 방식 "
        "(questions on|off, escalated answer|silent, responders ID..., handoff 그룹ID [토픽ID], reset) · "
        "/usage tg:ID 사용자 조회 · /quota tg:ID N|default 하루 토큰 한도",
        "hd_responder": "담당자",
        "hd_usage_help": "사용법: /usage 또는 (관리자) /usage tg:123456789",
        "hd_quota_help": "사용법: /quota tg:123456789 N 또는 /quota tg:123456789 default",
        "hd_stats_title": "📊 최근 {days}일 통계",
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
        "cmd.human": "Ask a person (a responder)",
        "cmd.resolve": "Mark a request to a person as resolved (responders, admins)",
        "cmd.usage": "Your usage today and your limits",
        "help_helpdesk": "Rate an answer with 👍 / 👎 under it (after 👎 your next message is "
        "your comment, /skip skips), call a person with 🙋 or /human [text]. /resolve marks it "
        "resolved (responders, admins) · /usage your usage today",
        "help_admin": "Admins: /stats statistics · /mode all|mention|off how I answer in this "
        "group (questions on|off, escalated answer|silent, responders ID..., handoff GROUP_ID "
        "[TOPIC_ID], reset) · /usage tg:ID look a user up · /quota tg:ID N|default daily tokens",
        "hd_responder": "responder",
        "hd_usage_help": "Usage: /usage or (admins) /usage tg:123456789",
        "hd_quota_help": "Usage: /quota tg:123456789 N or /quota tg:123456789 default",
        "hd_stats_title": "📊 The last {days} days",
    },
}


def t(key: str, lang: str | None = "ko", **params: object) -> str:
    """A Telegram text, or the shared one of the same key."""
    return t_from(_TEXTS, key, lang, **params)
