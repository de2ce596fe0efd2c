"""Splitting replies into Slack messages and rendering Markdown for Slack."""

from __future__ import annotations

from bots.slack.render import (
    as_chunk,
    fence_at,
    inbound_text,
    message_payload,
    neutralize,
    split,
    to_mrkdwn,
    to_plain,
)

PARAS = "".join(f"{i}번 문단. " + "가나다라 마바사 " * 20 + "\n\n" for i in range(10))


def test_segments_concatenate_to_the_source_and_respect_the_limit() -> None:
    segs = split(PARAS, 500)
    assert "".join(PARAS[s.start:s.end] for s in segs) == PARAS
    assert all(s.end - s.start <= 500 for s in segs)
    assert [s.closed for s in segs] == [True] * (len(segs) - 1) + [False]


def test_cuts_prefer_paragraphs_then_lines_then_spaces() -> None:
    segs = split(PARAS, 500)
    assert all(PARAS[s.start:s.end].endswith("\n\n") for s in segs[:-1])
    lines = "한 줄입니다 정말로\n" * 100
    assert all(lines[s.start:s.end].endswith("\n") for s in split(lines, 95)[:-1])
    words = "단어 " * 300
    assert all(words[s.start:s.end].endswith(" ") for s in split(words, 101)[:-1])
    solid = "가" * 1000
    assert [s.end - s.start for s in split(solid, 300)] == [300, 300, 300, 100]


def test_cuts_stay_put_while_text_grows() -> None:
    text = PARAS * 2
    final = split(text, 400)
    for n in range(0, len(text), 37):
        for early, late in zip(split(text[:n], 400)[:-1], final, strict=False):
            assert early == late


def test_forced_cuts_and_text_already_streamed_are_kept() -> None:
    segs = split(PARAS, 500, forced=(123,))
    assert (segs[0].start, segs[0].end) == (0, 123)
    first = split(PARAS, 500, min_first=490)[0]
    assert first.end >= 490


def test_a_code_block_cut_in_two_is_closed_and_reopened() -> None:
    code = "설명입니다.\n```python\n" + "x = 1\n" * 200 + "```\n끝."
    segs = split(code, 300)
    pieces = [as_chunk(code, s, close_open_fence=False) for s in segs]
    assert pieces[0].suffix == "```"
    assert pieces[1].prefix == "```python\n"
    for p in pieces:
        assert p.text.count("```") % 2 == 0
    assert "".join(p.body for p in pieces) == code


def test_fence_detection() -> None:
    text = "a\n```js\ncode\n```\nb\n~~~\nmore"
    assert fence_at(text, 10) == "js"
    assert fence_at(text, text.index("b")) is None
    assert fence_at(text, len(text)) == ""


def test_model_text_cannot_ping_the_channel() -> None:
    assert neutralize("<!channel> 모두 주목") == "<\u200b!channel> 모두 주목"
    assert neutralize("a < b") == "a < b"


def test_markdown_to_mrkdwn() -> None:
    md = "# 제목\n**굵게**와 *기울임*, ~~취소~~, [링크](https://korea.ac.kr)\n- 항목\n`a<b`"
    assert to_mrkdwn(md) == (
        "*제목*\n*굵게*와 _기울임_, ~취소~, <https://korea.ac.kr|링크>\n• 항목\n`a&lt;b`"
    )
    assert to_mrkdwn("```py\nif a < b:\n```") == "```\nif a &lt; b:\n```"


def test_payloads_have_a_markdown_block_and_a_plain_notification_text() -> None:
    payload = message_payload("**안녕** [고대](https://korea.ac.kr)", blocks=True)
    assert payload["blocks"] == [{"type": "markdown",
                                  "text": "**안녕** [고대](https://korea.ac.kr)"}]
    assert payload["text"] == "안녕 고대 (https://korea.ac.kr)"
    assert len(to_plain("가" * 5000)) == 1000


def test_incoming_text_is_what_the_person_wrote() -> None:
    raw = "<@U0BOT> 이 링크 <https://korea.ac.kr|고려대> 봐 줘 &lt;중요&gt; <#C123|general>"
    assert inbound_text(raw, "U0BOT") == \
        "이 링크 고려대 (https://korea.ac.kr) 봐 줘 <중요> #general"
    assert inbound_text("<@U0BOT>", "U0BOT") == ""
