"""Which conversation a message belongs to, and whether a group message speaks to the bot."""

from __future__ import annotations

from typing import Any

from telegram import Bot, Message

from bots.telegram.routing import (
    addressed_text,
    command_args,
    conversation,
    replies_to_bot,
    user_ref,
)
from tests.fakes.telegram_api import BOT, BOT_ID, BOT_USERNAME, TOKEN, User

ALICE = User(7, "앨리스 Alice", "alice", "en-US")


def message(text: str, chat: int = -100, entities: list[dict[str, Any]] | None = None,
            **extra: Any) -> Message:
    chat_json = ({"id": chat, "type": "private", "first_name": "A"} if chat > 0
                 else {"id": chat, "type": "supergroup", "title": "G", "is_forum": True})
    data = {"message_id": 5, "date": 0, "chat": chat_json, "from": ALICE.json(), "text": text,
            "entities": entities or [], **extra}
    return Message.de_json(data, Bot(TOKEN))


def mention(offset: int = 0) -> dict[str, Any]:
    return {"type": "mention", "offset": offset, "length": len(BOT_USERNAME) + 1}


def test_a_mention_is_removed_from_the_question() -> None:
    msg = message(f"@{BOT_USERNAME} 서울 날씨 알려줘", entities=[mention()])
    assert addressed_text(msg, BOT_ID, BOT_USERNAME) == "서울 날씨 알려줘"


def test_a_mention_after_emoji_uses_utf16_offsets() -> None:
    text = f"😀 질문: @{BOT_USERNAME} 고마워"
    msg = message(text, entities=[mention(offset=len("😀 질문: ") + 1)])
    assert addressed_text(msg, BOT_ID, BOT_USERNAME) == "😀 질문: 고마워"


def test_someone_elses_mention_is_not_for_us() -> None:
    msg = message("@other_bot 안녕", entities=[{"type": "mention", "offset": 0, "length": 10}])
    assert addressed_text(msg, BOT_ID, BOT_USERNAME) is None
    assert addressed_text(message("그냥 대화"), BOT_ID, BOT_USERNAME) is None


def test_a_reply_to_the_bot_is_addressed_but_not_a_topic_start() -> None:
    parent = {"message_id": 4, "date": 0, "chat": {"id": -100, "type": "supergroup"},
              "from": BOT.json(), "text": "이전 답변"}
    msg = message("더 자세히 알려줘", reply_to_message=parent)
    assert replies_to_bot(msg, BOT_ID)
    assert addressed_text(msg, BOT_ID, BOT_USERNAME) == "더 자세히 알려줘"
    topic = {**parent, "text": None, "forum_topic_created": {"name": "t", "icon_color": 1}}
    in_topic = message("잡담", reply_to_message=topic, message_thread_id=4, is_topic_message=True)
    assert addressed_text(in_topic, BOT_ID, BOT_USERNAME) is None


def test_conversation_scope_per_user_or_per_group_and_topic() -> None:
    msg = message("hi", message_thread_id=9, is_topic_message=True)
    assert conversation(msg, ALICE.id, "user").key == "telegram::-100:9:7"
    assert conversation(msg, ALICE.id, "group").key == "telegram::-100:9:"
    dm = message("hi", chat=7)
    assert conversation(dm, ALICE.id, "group").key == "telegram::7::7"


def test_user_ref_uses_the_username_and_language() -> None:
    ref = user_ref(message("x").from_user)  # type: ignore[arg-type]
    assert (ref.id, ref.name, ref.lang) == ("7", "alice", "en")


def test_command_arguments_keep_newlines() -> None:
    msg = message("/ask 첫 줄\n둘째 줄", entities=[{"type": "bot_command", "offset": 0,
                                                   "length": 4}])
    assert command_args(msg) == "첫 줄\n둘째 줄"


YAML = "server:\n  port:  8080\n\thosts:\n    - a    b\n"


def test_removing_a_mention_keeps_the_messages_spacing() -> None:
    lead = message(f"@{BOT_USERNAME}  설정 봐줘:\n{YAML}", entities=[mention()])
    assert addressed_text(lead, BOT_ID, BOT_USERNAME) == f"설정 봐줘:\n{YAML}".rstrip()
    middle = f"이  설정 @{BOT_USERNAME} 봐줘:\n{YAML}"
    inner = message(middle, entities=[mention(offset=len("이  설정 "))])
    assert addressed_text(inner, BOT_ID, BOT_USERNAME) == f"이  설정 봐줘:\n{YAML}".rstrip()
    own_line = message(f"@{BOT_USERNAME}\n\n    indented()\n        deeper()",
                       entities=[mention()])
    assert addressed_text(own_line, BOT_ID, BOT_USERNAME) == "    indented()\n        deeper()"


def test_command_arguments_keep_indentation() -> None:
    msg = message(f"/ask\n{YAML}", entities=[{"type": "bot_command", "offset": 0, "length": 4}])
    assert command_args(msg) == YAML.rstrip()
