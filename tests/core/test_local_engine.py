"""The local engine on the tiny model: arrivals prefilled together, long joins in chunks between
decode steps, first tokens released as their pass ends; greedy output equal to `generate`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import torch

from kullm_core.engine.base import EngineOutput, GenerationRequest, SamplingParams
from kullm_core.engine.local import LocalEngine


class Recorder:
    """The model, recording each forward call's (batch, new tokens); `hook` runs before one."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.config, self.generation_config = model.config, model.generation_config
        self.calls: list[tuple[int, int]] = []
        self.hook: Callable[[int, int], None] | None = None

    def parameters(self) -> Any:
        return self.model.parameters()

    def __call__(self, *, input_ids: torch.Tensor, **kw: Any) -> Any:
        shape = (int(input_ids.shape[0]), int(input_ids.shape[1]))
        if self.hook is not None:
            self.hook(*shape)
        self.calls.append(shape)
        return self.model(input_ids=input_ids, **kw)

    def prefills(self) -> list[tuple[int, int]]:
        return [c for c in self.calls if c[1] > 1]


def _greedy(model: Any, tok: Any, ids: list[int], n: int) -> str:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return str(tok.decode(out[0][len(ids):], skip_special_tokens=True))


def _prompt(tok: Any, text: str) -> list[int]:
    return list(tok(text)["input_ids"])


async def _text(engine: LocalEngine, rid: str, ids: list[int], n: int,
                outs: list[EngineOutput] | None = None) -> str:
    req = GenerationRequest(rid, ids, params=SamplingParams(max_new_tokens=n))
    parts = []
    async for out in engine.generate(req):
        parts.append(out.text)
        if outs is not None:
            outs.append(out)
    return "".join(parts)


async def test_simultaneous_arrivals_share_one_pass_and_match_greedy_generate(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    prompts = [_prompt(tiny_tokenizer, "서울의 날씨는 어떤가요? " * (i + 1)) for i in range(6)]
    rec = Recorder(tiny_model)
    async with LocalEngine(rec, tiny_tokenizer, arrival_window_s=0.2) as engine:
        texts = await asyncio.gather(*(_text(engine, f"s{i}", p, 16)
                                       for i, p in enumerate(prompts)))
    assert rec.prefills()[0] == (6, max(len(p) for p in prompts))  # one left-padded pass
    assert list(texts) == [_greedy(tiny_model, tiny_tokenizer, p, 16) for p in prompts]


async def test_a_long_join_is_prefilled_in_chunks_between_decode_steps(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    short = _prompt(tiny_tokenizer, "안녕하세요")
    long = _prompt(tiny_tokenizer, "고려대학교에 대해 자세히 알려 주세요. " * 12)
    rec = Recorder(tiny_model)
    async with LocalEngine(rec, tiny_tokenizer, prefill_chunk_tokens=16) as engine:
        first: list[EngineOutput] = []
        running = asyncio.create_task(_text(engine, "run", short, 60, first))
        async with asyncio.timeout(30):
            while not first:
                await asyncio.sleep(0.01)
        joined = await _text(engine, "join", long, 12)
        ran = await running
    calls = rec.calls
    chunks = [i for i, c in enumerate(calls) if c[1] > 1][1:]  # after the short prefill
    assert len(chunks) >= len(long) // 16  # the join came in bounded pieces...
    assert sum(calls[i][1] for i in chunks) == len(long)
    assert all(calls[i + 1] == (1, 1) for i in chunks[:-1])  # ...each followed by a step
    assert ran == _greedy(tiny_model, tiny_tokenizer, short, 60)
    assert joined == _greedy(tiny_model, tiny_tokenizer, long, 12)


async def test_the_first_arrival_streams_before_the_next_prefill_runs(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    a = _prompt(tiny_tokenizer, "첫 번째 질문입니다")
    b = _prompt(tiny_tokenizer, "두 번째 질문입니다, 조금 더 깁니다. " * 4)
    rec = Recorder(tiny_model)
    got_a = threading.Event()
    waited: list[bool] = []

    def hold_second_prefill(rows: int, tokens: int) -> None:
        if tokens > 1 and len(rec.prefills()) == 1:  # B's pass waits for A's first token
            waited.append(got_a.wait(20))

    rec.hook = hold_second_prefill
    # a pass holds one of them only: B is prefilled after A, in a pass of its own
    async with LocalEngine(rec, tiny_tokenizer, max_prefill_tokens=len(b),
                           arrival_window_s=0.2) as engine:
        outs: list[EngineOutput] = []

        async def first_a() -> str:
            req = GenerationRequest("a", a, params=SamplingParams(max_new_tokens=8))
            parts = []
            async for out in engine.generate(req):
                got_a.set()
                parts.append(out.text)
                outs.append(out)
            return "".join(parts)

        text_a, text_b = await asyncio.gather(first_a(), _text(engine, "b", b, 8))
    assert waited == [True]
    assert text_a == _greedy(tiny_model, tiny_tokenizer, a, 8)
    assert text_b == _greedy(tiny_model, tiny_tokenizer, b, 8)


async def test_a_request_cancelled_mid_prefill_ends_and_the_others_continue(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    short = _prompt(tiny_tokenizer, "안녕하세요")
    long = _prompt(tiny_tokenizer, "긴 질문입니다. " * 20)
    rec = Recorder(tiny_model)
    engine = LocalEngine(rec, tiny_tokenizer, prefill_chunk_tokens=16)

    def cancel_at_second_chunk(rows: int, tokens: int) -> None:
        if tokens > 1 and len(rec.prefills()) == 2:  # the short prompt's pass, one chunk
            engine.cancel("long")

    async with engine:
        first: list[EngineOutput] = []
        running = asyncio.create_task(_text(engine, "run", short, 40, first))
        async with asyncio.timeout(30):
            while not first:
                await asyncio.sleep(0.01)
        rec.hook = cancel_at_second_chunk
        outs: list[EngineOutput] = []
        assert await _text(engine, "long", long, 20, outs) == ""
        assert outs[-1].finish_reason == "cancelled"
        assert await running == _greedy(tiny_model, tiny_tokenizer, short, 40)
    assert sum(c[1] for c in rec.prefills()) < len(short) + len(long)


async def test_each_arrival_keeps_its_own_penalty_and_ngram_ban_in_a_shared_pass(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    prompts = [_prompt(tiny_tokenizer, f"질문 {i}: 수도는? " * (i + 1)) for i in range(3)]
    settings = [SamplingParams(max_new_tokens=20),
                SamplingParams(max_new_tokens=20, repetition_penalty=1.5),
                SamplingParams(max_new_tokens=20, no_repeat_ngram_size=2)]
    rec = Recorder(tiny_model)

    async def one(i: int) -> str:
        req = GenerationRequest(f"p{i}", prompts[i], params=settings[i])
        return "".join([out.text async for out in engine.generate(req)])

    async with LocalEngine(rec, tiny_tokenizer, arrival_window_s=0.2) as engine:
        texts = await asyncio.gather(*(one(i) for i in range(3)))
    assert rec.prefills()[0][0] == 3
    for text, ids, p in zip(texts, prompts, settings, strict=True):
        out = tiny_model.generate(
            torch.tensor([ids]), max_new_tokens=20, do_sample=False,
            repetition_penalty=p.repetition_penalty, no_repeat_ngram_size=p.no_repeat_ngram_size)
        assert text == tiny_tokenizer.decode(out[0][len(ids):], skip_special_tokens=True)


async def test_a_seeded_request_samples_the_same_reply_again(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    ids = _prompt(tiny_tokenizer, "오늘 점심 메뉴를 추천해 주세요")
    params = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=7)
    async with LocalEngine(tiny_model, tiny_tokenizer) as engine:
        replies = []
        for i in range(2):
            req = GenerationRequest(f"seed{i}", ids, params=params)
            replies.append("".join([out.text async for out in engine.generate(req)]))
    assert replies[0] == replies[1] != ""
