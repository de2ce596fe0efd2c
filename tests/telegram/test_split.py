"""Cutting long replies into messages, and rendering Markdown for Telegram."""

from __future__ import annotations

import re

import pytest

from bots.telegram.render import (
    close_open_markup,
    final_pieces,
    plain_pieces,
    render_markdown,
    streaming_pieces,
)
from bots.telegram.split import (
    MAX_MESSAGE,
    Entity,
    _clip,
    fenced_blocks,
    split_markdown,
    split_text,
    utf16_len,
)

KOREAN_PARAGRAPH = (
    "고려대학교는 서울특별시 성북구에 있는 사립 대학교입니다. 1905년에 보성전문학교로 "
    "설립되었으며, 오랜 역사와 전통을 자랑합니다. 캠퍼스에는 고풍스러운 석조 건물이 많습니다. "
)


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_short_text_is_one_piece_without_surrounding_whitespace() -> None:
    assert [p.text for p in split_text("\n  안녕하세요  \n")] == ["안녕하세요"]
    assert split_text("   \n ") == []


def test_long_korean_text_is_cut_at_paragraphs_and_loses_nothing() -> None:
    paragraphs = [KOREAN_PARAGRAPH * 6 for _ in range(8)]
    text = "\n\n".join(paragraphs)
    pieces = split_text(text)
    assert len(pieces) > 1
    assert all(utf16_len(p.text) <= MAX_MESSAGE for p in pieces)
    assert _squash("".join(p.text for p in pieces)) == _squash(text)
    # Each piece is whole paragraphs: it starts where a paragraph starts and ends where one ends.
    for p in pieces:
        assert p.text.startswith("고려대학교는") and p.text.endswith("많습니다.")


def test_one_huge_paragraph_is_cut_after_a_sentence() -> None:
    text = KOREAN_PARAGRAPH * 60
    pieces = split_text(text)
    assert len(pieces) > 1
    for p in pieces[:-1]:
        assert p.text.endswith(("니다.", "니다")), p.text[-20:]
    assert _squash("".join(p.text for p in pieces)) == _squash(text)


def test_limit_counts_utf16_units_and_never_splits_an_emoji() -> None:
    text = "😀" * 3000  # 2 UTF-16 units each, no spaces at all
    pieces = split_text(text)
    assert [utf16_len(p.text) for p in pieces] == [4096, 1904]
    assert "".join(p.text for p in pieces) == text


@pytest.mark.parametrize("glue", ["e\u0301", "\u1100\u1161\u11a8", "👍🏽", "👩\u200d💻"])
def test_a_character_with_its_marks_stays_whole(glue: str) -> None:
    # Put the multi-code-point character exactly where a hard cut would fall.
    head = "가" * (MAX_MESSAGE - 1)
    text = head + glue + "나" * 10
    pieces = split_text(text)
    assert "".join(p.text for p in pieces) == text
    assert any(glue in p.text for p in pieces), [p.text[-3:] for p in pieces]


def test_code_block_that_fits_is_never_cut() -> None:
    code = "```python\n" + "".join(f"print({i})\n" for i in range(300)) + "```"
    text = KOREAN_PARAGRAPH * 12 + "\n\n" + code + "\n\n끝입니다."
    opening = text.index("```")
    assert fenced_blocks(text) == [(opening, text.index("```", opening + 3) + 3)]
    pieces = split_markdown(text)
    assert len(pieces) >= 2
    holder = [p for p in pieces if "```python" in p]
    assert len(holder) == 1 and holder[0].count("```") == 2


def test_code_block_longer_than_a_message_is_cut_between_lines() -> None:
    lines = [f"    value_{i} = compute({i})" for i in range(400)]
    markdown = "코드입니다.\n\n```python\n" + "\n".join(lines) + "\n```"
    rendered = render_markdown(markdown)
    pieces = split_text(rendered.text, entities=rendered.entities)
    assert len(pieces) >= 3
    for p in pieces:
        assert utf16_len(p.text) <= MAX_MESSAGE
        pres = [e for e in p.entities if e.type == "pre"]
        if "value_" in p.text:  # every part of the code is a complete code block of its own
            assert len(pres) == 1
        for line in p.text.splitlines():
            if "value_" in line:
                assert line.startswith("    value_") and line.endswith(")")


def test_entities_are_clipped_to_their_piece() -> None:
    text = "가" * 4000 + " " + "굵은글씨" * 50
    bold = Entity("bold", 3990, utf16_len(text) - 3990)
    pieces = split_text(text, entities=(bold,))
    assert len(pieces) == 2
    assert pieces[0].entities == (Entity("bold", 3990, 10),)
    assert pieces[1].entities == (Entity("bold", 0, utf16_len(pieces[1].text)),)


def test_markdown_is_rendered_as_entities() -> None:
    piece = render_markdown("**굵게** 그리고 `코드`와 [링크](https://example.com)")
    assert "**" not in piece.text and "`" not in piece.text
    kinds = {e.type for e in piece.entities}
    assert {"bold", "code", "text_link"} <= kinds
    link = next(e for e in piece.entities if e.type == "text_link")
    assert link.url == "https://example.com"


def test_final_pieces_end_with_the_note_and_fit() -> None:
    text = "\n\n".join(KOREAN_PARAGRAPH * 7 for _ in range(6))
    note = "⏹ (생성 중단됨)"
    pieces = final_pieces(text, note)
    assert pieces[-1].text.endswith("\n\n" + note)
    assert all(utf16_len(p.text) <= MAX_MESSAGE for p in pieces)
    plain = plain_pieces(text, note)
    assert _squash("".join(p.text for p in plain)) == _squash(text + note)


def test_streamed_pieces_before_the_last_do_not_change_as_text_grows() -> None:
    text = "\n\n".join(KOREAN_PARAGRAPH * 5 for _ in range(10))
    earlier = split_markdown(text[:9000])
    later = split_markdown(text)
    assert later[: len(earlier) - 1] == earlier[:-1]


@pytest.mark.parametrize(("partial", "shown"), [
    ("Hello **wor", "Hello **wor**"),
    ("a **b** and *it", "a **b** and *it*"),
    ("x ~~stri", "x ~~stri~~"),
    ("run `pip ins", "run `pip ins`"),
    ("**bold *both", "**bold *both***"),
    ("Hello **", "Hello "),
    ("Hello **world ", "Hello **world**"),
    ("text\n\n- ", "text"),
    ("see [the site](https://ex", "see the site"),
    ("2*3 = 6 and snake_case", "2*3 = 6 and snake_case"),
    ("```python\nx = 1 * *", "```python\nx = 1 * *"),
])
def test_streamed_markdown_closes_what_it_opened(partial: str, shown: str) -> None:
    assert close_open_markup(partial) == shown


STREAMED = (
    "## 제목\n\n**굵게** 그리고 *기울임* `코드` ~~취소~~ [링크](https://example.com)\n\n"
    "- 항목 **하나**\n- 항목 _둘_\n\n```python\ndef f(x):\n    return x * 2  # **\n```\n\n"
    "끝 **문장**입니다. 😀 "
) * 3


def test_every_streamed_prefix_is_formatted_as_the_final_reply() -> None:
    """Formatting shown while streaming never changes later: on the text a prefix shares
    with the final reply, its entities are the final ones (links once their URL is known)."""
    (final,) = final_pieces(STREAMED)
    for end in range(1, len(STREAMED) + 1):
        for piece in streaming_pieces(STREAMED[:end]):
            common = 0
            while common < len(piece.text) and piece.text[common] == final.text[common]:
                common += 1
            assert common >= len(piece.text) - 1, STREAMED[:end]
            upto = utf16_len(piece.text[:common])
            clip = {e for e in _clip(piece.entities, 0, upto) if e.type != "text_link"}
            want = {e for e in _clip(final.entities, 0, upto) if e.type != "text_link"}
            assert clip == want, STREAMED[:end]
            assert piece.text.count("**") <= final.text.count("**")


def test_a_relative_link_shows_as_its_text() -> None:
    piece = render_markdown("[문서](docs/a.md)와 [사이트](https://example.com)")
    assert piece.text == "문서와 사이트"
    assert [(e.type, e.url) for e in piece.entities] == [("text_link", "https://example.com")]
