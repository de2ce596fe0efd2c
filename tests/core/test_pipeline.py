"""End-to-end through real Redis, the real worker and the tiny model."""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from kullm_core.client import CoreClient
from kullm_core.prompt import PromptBuilder
from kullm_core.settings import GenerationSettings
from kullm_core.wire import ConversationRef, UserRef
from tests.core.helpers import CONV, USER, ask, collect, deltas_text, done


def greedy_reference(model: Any, tok: Any, history: list[Any], text: str, n: int) -> str:
    builder = PromptBuilder.from_settings(tok, GenerationSettings(max_new_tokens=n))
    ids = builder.build(history, text).ids
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return str(tok.decode(out[0][len(ids):], skip_special_tokens=True))


async def test_reply_streams_exactly_the_greedy_generate_output(
    client: CoreClient, worker: Any, tiny_model: Any, tiny_tokenizer: Any
) -> None:
    sub = await client.submit(CONV, USER, "고려대학교에 대해 알려줘", "m1")
    events = await collect(client, sub.job_id)
    assert [e.type for e in events][:2] == ["queued", "started"]
    expected = greedy_reference(tiny_model, tiny_tokenizer, [], "고려대학교에 대해 알려줘", 24)
    assert deltas_text(events) == expected
    assert done(events).text == expected
    assert done(events).completion_tokens == 24
    assert done(events).finish_reason == "length"


async def test_history_is_used_across_turns(
    client: CoreClient, worker: Any, tiny_model: Any, tiny_tokenizer: Any
) -> None:
    first = await ask(client, "첫 번째 질문입니다", "t1")
    second = await ask(client, "두 번째 질문입니다", "t2")
    history = await client.history(CONV)
    assert [(t.user, t.assistant) for t in history] == [
        ("첫 번째 질문입니다", first.text), ("두 번째 질문입니다", second.text)
    ]
    expected = greedy_reference(tiny_model, tiny_tokenizer, history[:1], "두 번째 질문입니다", 24)
    assert second.text == expected


async def test_eight_conversations_at_once_match_one_at_a_time(
    client: CoreClient, make_worker: Any
) -> None:
    prompts = [f"질문 {i}: 서울의 날씨는 어떤가요? " * (i + 1) for i in range(8)]
    convs = [ConversationRef(platform="test", chat=f"c{i}") for i in range(8)]
    async with make_worker():
        alone = [(await ask(client, p, f"a{i}", convs[i])).text for i, p in enumerate(prompts)]
        for c in convs:
            await client.reset(c)
        subs = [await client.submit(c, USER, p, f"b{i}") for i, (c, p) in
                enumerate(zip(convs, prompts, strict=True))]
        together = await asyncio.gather(*(collect(client, s.job_id) for s in subs))
    assert [done(e).text for e in together] == alone


async def test_duplicate_source_id_gives_one_reply(client: CoreClient, worker: Any) -> None:
    a = await client.submit(CONV, USER, "안녕하세요", "dup-1")
    b = await client.submit(CONV, USER, "안녕하세요", "dup-1")
    assert (a.status, b.status) == ("queued", "duplicate") and a.job_id == b.job_id
    done(await collect(client, a.job_id))
    assert len(await client.history(CONV)) == 1


async def test_messages_in_one_conversation_are_answered_in_order(
    client: CoreClient, worker: Any
) -> None:
    subs = [await client.submit(CONV, USER, f"메시지 {i}", f"o{i}") for i in range(3)]
    for s in subs:
        done(await collect(client, s.job_id))
    assert [t.user for t in await client.history(CONV)] == ["메시지 0", "메시지 1", "메시지 2"]


async def test_user_in_shared_thread_forgets_only_their_turns(
    client: CoreClient, worker: Any
) -> None:
    thread = ConversationRef(platform="test", chat="ch", thread="t1")
    alice, bob = UserRef(platform="test", id="alice"), UserRef(platform="test", id="bob")
    await ask(client, "앨리스 질문", "f1", thread, alice)
    await ask(client, "밥 질문", "f2", thread, bob)
    assert await client.forget("test", "alice") == 1
    assert [t.user_id for t in await client.history(thread)] == ["bob"]


async def test_reset_starts_a_new_conversation(client: CoreClient, worker: Any) -> None:
    await ask(client, "기억해 주세요", "r1")
    assert await client.reset(CONV)
    assert await client.history(CONV) == []


async def test_empty_message_is_rejected_with_a_clear_error(client: CoreClient) -> None:
    sub = await client.submit(CONV, USER, "   \n ", "e1")
    assert sub.status == "rejected" and sub.error is not None and sub.error.kind == "bad_input"


async def test_a_reader_resumes_from_its_last_id_without_gaps_or_repeats(
    client: CoreClient, worker: Any
) -> None:
    sub = await client.submit(CONV, USER, "이어 읽기 테스트", "resume-1")
    seen: list[tuple[str, Any]] = []
    async for entry, event in client.events(sub.job_id):
        seen.append((entry, event))
        if len(seen) == 3:
            break  # the adapter "restarts" here
    async for entry, event in client.events(sub.job_id, last_id=seen[-1][0]):
        seen.append((entry, event))
    entries = [e for e, _ in seen]
    assert entries == sorted(set(entries))
    events = [ev for _, ev in seen]
    assert deltas_text(events) == done(events).text
