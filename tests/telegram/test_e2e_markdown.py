"""Markdown end to end: the reply is formatted while it streams (drafts in private chats,
edits in groups), every intermediate text is one Telegram accepts, and the formatting shown
while streaming is the formatting the finished reply keeps (nothing jumps at the end).

The fake Bot API refuses malformed entities the way Telegram does, so a bad interim would
show up as a refused call; the checks below read what the user saw on every version.
"""

from __future__ import annotations

from typing import Any

import pytest
from telegram import Bot, MessageEntity
from telegram.error import BadRequest

from bots.telegram.render import final_pieces, to_telegram
from bots.telegram.split import MAX_MESSAGE, utf16_len
from kullm_core.client import CoreClient
from kullm_core.engine.scripted import ScriptedEngine
from tests.fakes.telegram_api import TOKEN, FakeLimits, FakeTelegram
from tests.telegram.conftest import MakeBot
from tests.telegram.helpers import ALICE, GROUP, wait_reply

ANSWER = (
    "## 서울 소개\n\n"
    "**서울**은 대한민국의 *수도*이며, 인구는 약 `9,400,000`명입니다. ~~부산~~이 아닙니다.\n\n"
    "- **경복궁**: 조선의 *법궁*\n"
    "- **남산타워**: 전망대\n\n"
    "```python\ndef greet(name):\n    return f\"안녕, {name}!\"  # **굵게 아님**\n```\n\n"
    "자세한 내용은 [공식 사이트](https://www.seoul.go.kr)를 보세요. **끝**."
)


def scripted(text: str, delay_s: float = 0.1) -> ScriptedEngine:
    """Streams `text` in 20 parts (the test settings allow 24 tokens, one per part)."""
    return ScriptedEngine(lambda _req: text, chunk_chars=len(text) // 20 + 1, delay_s=delay_s)


PARSE_REFUSED = r"(?i)can't parse entities"
Version = tuple[str, list[dict[str, Any]]]


def _spans(entities: list[dict[str, Any]], upto: int) -> set[tuple[str, int, int]]:
    """Entities clipped to the first `upto` UTF-16 units; links aside (a link can only be
    shown once its URL has been written)."""
    out = set()
    for e in entities:
        a, b = e["offset"], min(e["offset"] + e["length"], upto)
        if b > a and e["type"] != "text_link":
            out.add((e["type"], a, b - a))
    return out


def assert_streamed_as_final(versions: list[Version], final: Version) -> None:
    """Each version is a start of the final message, formatted as the final one is."""
    text, entities = final
    for shown, shown_entities in versions:
        common = 0
        while common < min(len(shown), len(text)) and shown[common] == text[common]:
            common += 1
        assert common >= len(shown) - 1, (shown, text)  # the text only grows
        upto = utf16_len(shown[:common])
        assert _spans(shown_entities, upto) == _spans(entities, upto), shown
        for raw in ("**", "`", "~"):  # no raw Markdown on screen (but in code, as typed)
            assert shown.count(raw) <= text.count(raw), shown


def refused(tg: FakeTelegram) -> list[str]:
    return [c.error for c in tg.calls
            if c.error.startswith("400") and "not modified" not in c.error]


async def test_group_reply_is_formatted_in_every_edit(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    async with make_worker(engine=scripted(ANSWER)), make_bot():
        ask = await tg.mention(GROUP, ALICE, "서울 소개해 줘")
        done, (reply,) = await wait_reply(tg, client, ask)
    (want,) = final_pieces(done.text)
    assert reply.text == want.text
    final = (reply.text, reply.entities)
    kinds = {e["type"] for e in reply.entities}
    assert {"bold", "italic", "code", "strikethrough", "pre", "text_link"} <= kinds
    interim = list(zip(reply.versions, reply.formats, strict=True))[:-1]
    assert len(interim) >= 3
    assert_streamed_as_final(interim, final)
    assert any(any(e["type"] == "bold" for e in f) for _, f in interim[:-1])
    assert not refused(tg) and not tg.violations


async def test_private_reply_is_formatted_in_every_draft(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    async with make_worker(engine=scripted(ANSWER)), make_bot():
        msg = await tg.send_text(ALICE.id, ALICE, "서울 소개해 줘")
        _done, (reply,) = await wait_reply(tg, client, msg)
    ((key, texts),) = [(k, v) for k, v in tg.drafts.items() if k[0] == ALICE.id]
    drafts = list(zip(texts, tg.draft_formats[key], strict=True))
    assert len(drafts) >= 3
    assert_streamed_as_final(drafts, (reply.text, reply.entities))
    assert any(any(e["type"] == "pre" for e in f) for _, f in drafts)
    assert reply.versions == [reply.text]  # the finished reply is sent once, formatted
    assert not refused(tg) and not tg.violations


async def test_a_long_formatted_reply_streams_over_several_valid_messages(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    section = ("### 항목\n\n**굵은 글씨**와 *기울임*, `코드`가 섞인 문단입니다. "
               "서울에는 궁궐과 박물관이 많습니다. 😀\n\n")
    text = section * 160  # three messages once rendered
    async with make_worker(engine=scripted(text)), make_bot():
        ask = await tg.mention(GROUP, ALICE, "길게 설명해 줘")
        done, shown = await wait_reply(tg, client, ask)
    want = final_pieces(done.text)
    assert len(shown) == len(want) >= 3
    for msg, piece in zip(shown, want, strict=True):
        assert msg.text == piece.text
        assert all(utf16_len(v) <= MAX_MESSAGE for v in msg.versions)
        versions = list(zip(msg.versions, msg.formats, strict=True))
        assert_streamed_as_final(versions[:-1], (msg.text, msg.entities))
        assert any(e["type"] == "bold" for e in msg.formats[0])  # formatted from the start
    assert not refused(tg) and not tg.violations


async def test_the_fake_refuses_malformed_formatting_as_telegram_does() -> None:
    """The checks above rely on it: a malformed entity or markup is a refused call."""
    async with FakeTelegram(FakeLimits(chat_interval_s=0.0, global_limit=1000)) as tg:
        await _send_malformed(tg)


async def _send_malformed(tg: FakeTelegram) -> None:
    tg.chat(ALICE.id)
    bad_entities = [
        [MessageEntity("bold", 0, 99)],  # past the end of the text
        [MessageEntity("text_link", 0, 2, url="docs/a.md")],  # a link Telegram cannot open
        [MessageEntity("custom_emoji", 0, 2)],
    ]
    async with Bot(TOKEN, base_url=tg.base_url) as bot:
        for entities in bad_entities:
            with pytest.raises(BadRequest):
                await bot.send_message(ALICE.id, "안녕 세상", entities=entities)
        for markup in ("*열린 굵게", "마침표는 이스케이프.", "`코드"):
            with pytest.raises(BadRequest, match=PARSE_REFUSED):
                await bot.send_message(ALICE.id, markup, parse_mode="MarkdownV2")
        with pytest.raises(BadRequest, match=PARSE_REFUSED):
            await bot.send_message(ALICE.id, "<b>열린 태그", parse_mode="HTML")
        ok = await bot.send_message(ALICE.id, "*굵게* 와 `a.b` 그리고 \\.", parse_mode="MarkdownV2")
        assert ok.text == "굵게 와 a.b 그리고 ."
        text, entities = final_pieces(ANSWER)[0].text, to_telegram(final_pieces(ANSWER)[0].entities)
        assert (await bot.send_message(ALICE.id, text, entities=entities)).text == text


async def test_refused_formatting_mid_stream_goes_on_as_plain_text(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    tg.reject_entities = True
    async with make_worker(engine=scripted(ANSWER)), make_bot():
        msg = await tg.send_text(ALICE.id, ALICE, "서울 소개해 줘")
        done, (reply,) = await wait_reply(tg, client, msg, plain=True)
    assert reply.text == done.text and reply.entities == []
    refused_drafts = [c for c in tg.calls if c.method == "sendMessageDraft" and c.error]
    ((_, plain_drafts),) = [(k, v) for k, v in tg.drafts.items() if k[0] == ALICE.id]
    assert refused_drafts and len(plain_drafts) >= 2  # it kept streaming, unformatted
    assert all(done.text.startswith(d) for d in plain_drafts)
