"""Links back to the conversation and responders tagged in a hand-off (pure)."""

from __future__ import annotations

from telegram import Chat

from bots.telegram.handoff import (
    handoff_entities,
    message_link,
    responder_labels,
    tagged,
    utf16_len,
)


def test_links_for_each_kind_of_chat() -> None:
    assert message_link(Chat(-1001234567890, "supergroup"), 42) == \
        "https://t.me/c/1234567890/42"
    assert message_link(Chat(-1001234567890, "supergroup"), 42, thread=7) == \
        "https://t.me/c/1234567890/7/42"
    assert message_link(Chat(-1001, "supergroup", username="team_help"), 9) == \
        "https://t.me/team_help/9"
    assert message_link(Chat(1001, "private"), 3) == "tg://user?id=1001"
    assert message_link(Chat(-4567, "group"), 3) == "", "basic groups have no message links"


def test_responders_are_tagged_where_they_stand_in_the_text() -> None:
    labels = responder_labels(["1010", "rita", ""], "담당자")
    mentions, at_zero = tagged("", labels)
    assert mentions == "담당자1 @rita"
    text = f"🙋 앨리스 님이 도움을 요청했습니다. {mentions}\n질문: 담당자1 누구?"
    ents = handoff_entities(text, mentions, at_zero, "앨리스")
    units = text.encode("utf-16-le")
    shown = [units[2 * e.offset:2 * (e.offset + e.length)].decode("utf-16-le") for e in ents]
    assert shown == ["담당자1", "@rita"]
    assert [e.type for e in ents] == ["text_link", "mention"]
    assert ents[0].url == "tg://user?id=1010"
    assert utf16_len("🙋") == 2
    assert handoff_entities("no tags", "", [], "x") == []
