"""`kullm chat`'s terminal adapter through the real queue, worker and store: the same fold of
reply events as the platforms, and commands that run instead of reaching the model as text."""

from __future__ import annotations

import io
from typing import Any

from bots.terminal import TerminalChat
from kullm_core.client import CoreClient
from kullm_core.engine.scripted import ScriptedEngine


def _chat(client: CoreClient) -> tuple[TerminalChat, io.StringIO]:
    out = io.StringIO()
    return TerminalChat(client, "ko", out=out), out


async def test_a_reply_streams_then_retry_and_forget_are_commands(
    client: CoreClient, make_worker: Any
) -> None:
    answers = iter(["첫 번째 답입니다.", "다시 쓴 답입니다."])
    engine = ScriptedEngine(lambda _req: next(answers), chunk_chars=2, delay_s=0.01)
    chat, out = _chat(client)
    async with make_worker(engine=engine):
        assert await chat.ask("안녕하세요") == 0
        assert out.getvalue() == "첫 번째 답입니다.\n"  # each piece printed once, in order
        assert await chat.retry() == 0
        turns = await client.history(chat.conv)
        assert [(t.user, t.assistant) for t in turns] == [("안녕하세요", "다시 쓴 답입니다.")]
        await chat.command("/foo")  # unknown: the help, never a question to the model
        await chat.command("/forget")  # asks first
        assert len(await client.history(chat.conv)) == 1
        await chat.command("/forget yes")
    assert await client.history(chat.conv) == []
    text = out.getvalue()
    assert "/retry" in text and "(/forget yes)" in text and "1개를 삭제했습니다" in text


async def test_retry_with_nothing_to_retry_says_so(client: CoreClient) -> None:
    chat, out = _chat(client)
    assert await chat.retry() == 1
    assert out.getvalue() == "다시 생성할 답변이 없습니다.\n"
