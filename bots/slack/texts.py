"""Slack-only UI texts (Korean default, English); the shared ones come from `kullm_core.texts`."""

from __future__ import annotations

from kullm_core.texts import t_from

_TEXTS: dict[str, dict[str, str]] = {
    "ko": {
        "help": "*KULLM3(구름) 사용법*\n"
        "• 채널에서 `@KULLM 질문` 으로 부르면 그 메시지의 스레드에 답합니다. 스레드 안에서는 "
        "멘션 없이 이어서 물어볼 수 있고, 스레드의 모든 사람이 같은 대화를 공유합니다.\n"
        "• DM으로 바로 물어볼 수도 있습니다.\n"
        "• `/kullm reset` 새 대화 시작 · `/kullm stop` 답변 중단 · "
        "`/kullm retry` 마지막 답변 다시 생성 · "
        "`/kullm forget` 내 대화 기록 삭제 · `/kullm help` 도움말\n"
        "• 답변 아래 👍 / 👎 로 평가하고, 🙋 사람에게 문의 로 담당자를 부를 수 있습니다. "
        "`/kullm human` 담당자 부르기 · `/kullm resolve` 해결됨 표시 (담당자·관리자) · "
        "`/kullm usage` 오늘 내 사용량\n"
        "• 관리자: `/kullm stats` 통계 · `/kullm usage @사람` 사용량 조회 · "
        "`/kullm quota @사람 N|default` 하루 토큰 한도 · `/kullm mode all|mention|off` 이 채널에서 답하는 방식 "
        "(`questions on|off`, `escalated answer|silent`, `responders @사람 @그룹`, `reset`)",
        "empty_reply": "(빈 답변입니다. 질문을 바꾸어 다시 물어봐 주세요.)",
        "reset_none": "초기화할 대화가 없습니다. 먼저 질문해 주세요.",
        "hd_send": "보내기",
        "hd_skip": "건너뛰기",
        "hd_nothing_to_escalate": "담당자에게 넘길 대화가 없습니다. 먼저 질문해 주세요.",
        "hd_home_stats": "KULLM 도우미 통계 (최근 {days}일)",
        "hd_home_usage": "내 KULLM 사용량",
        "hd_usage_help": "사용법: /kullm usage 또는 (관리자) /kullm usage @사용자",
        "hd_quota_help": "사용법 (관리자): /kullm quota @사용자 N 또는 /kullm quota @사용자 default",
        "prompt1.title": "자기소개",
        "prompt1.message": "너는 누구야? 무엇을 할 수 있어?",
        "prompt2.title": "요약하기",
        "prompt2.message": "다음 글을 세 문장으로 요약해 줘:",
        "prompt3.title": "번역하기",
        "prompt3.message": "다음 문장을 자연스러운 영어로 번역해 줘:",
        "prompts_title": "이렇게 물어보세요",
    },
    "en": {
        "help": "*How to use KULLM3 (구름)*\n"
        "• In a channel, write `@KULLM question`: I answer in that message's thread. In the "
        "thread you can go on without mentioning me; everyone in it shares the conversation.\n"
        "• You can also ask me in a DM.\n"
        "• `/kullm reset` new conversation · `/kullm stop` stop the answer · "
        "`/kullm retry` regenerate the last answer · "
        "`/kullm forget` delete my stored conversations · `/kullm help` this help\n"
        "• Rate an answer with 👍 / 👎 under it, or press 🙋 Ask a person to call a responder. "
        "`/kullm human` call a person · `/kullm resolve` mark it resolved (responders, admins)"
        " · `/kullm usage` my usage today\n"
        "• Admins: `/kullm stats` statistics · `/kullm usage @person` look a user up · "
        "`/kullm quota @person N|default` their daily token limit · `/kullm mode all|mention|off` how I answer in "
        "this channel (`questions on|off`, `escalated answer|silent`, `responders @person "
        "@group`, `reset`)",
        "empty_reply": "(The answer was empty. Please rephrase and ask again.)",
        "reset_none": "There is no conversation to reset yet. Ask me something first.",
        "hd_send": "Send",
        "hd_skip": "Skip",
        "hd_nothing_to_escalate": "There is no conversation to hand to a person yet. "
        "Ask me something first.",
        "hd_home_stats": "KULLM helpdesk statistics (last {days} days)",
        "hd_home_usage": "Your KULLM usage",
        "hd_usage_help": "Usage: /kullm usage or (admins) /kullm usage @user",
        "hd_quota_help": "Usage (admins): /kullm quota @user N or /kullm quota @user default",
        "prompt1.title": "Who are you?",
        "prompt1.message": "Who are you and what can you do?",
        "prompt2.title": "Summarize",
        "prompt2.message": "Summarize the following text in three sentences:",
        "prompt3.title": "Translate",
        "prompt3.message": "Translate the following sentence into natural Korean:",
        "prompts_title": "Try asking",
    },
}


def st(key: str, lang: str | None = "ko", **params: object) -> str:
    """A Slack text, falling back to the shared core texts for keys defined there."""
    return t_from(_TEXTS, key, lang, **params)


def suggested_prompts(lang: str) -> list[dict[str, str]]:
    return [
        {"title": st(f"prompt{i}.title", lang), "message": st(f"prompt{i}.message", lang)}
        for i in (1, 2, 3)
    ]
