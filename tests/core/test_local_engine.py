"""The local engine on the tiny model: arrivals prefilled together, long joins in chunks between
decode steps, first tokens released as their pass ends; greedy output equal to `generate`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from kullm_core.engine.base import EngineOutput, GenerationRequest, SamplingParams
from kullm_core.engine.local import LocalEngine
from kullm_core.engine.slots import current_plan
from tests.core.engine_helpers import greedy, outputs, prompt_ids, reply_text
from tests.core.host_sync import HostSync


@dataclass(frozen=True)
class Pass:
    """What one forward pass held: decode rows, then prompt pieces (slot, start, length)."""

    decode: int
    pieces: tuple[tuple[int, int, int], ...]

    @property
    def prompt_tokens(self) -> int:
        return sum(length for _, _, length in self.pieces)


class Recorder:
    """The model, recording each pass the engine planned; `hook` runs before one."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.config, self.generation_config = model.config, model.generation_config
        self.passes: list[Pass] = []
        self.hook: Callable[[Pass], None] | None = None

    def parameters(self) -> Any:
        return self.model.parameters()

    def __call__(self, **kw: Any) -> Any:
        plan = current_plan()
        assert plan is not None
        seen = Pass(len(plan.decode), tuple((p.slot, p.start, p.length) for p in plan.pieces))
        if self.hook is not None:
            self.hook(seen)
        self.passes.append(seen)
        return self.model(**kw)

    def prefills(self) -> list[Pass]:
        return [p for p in self.passes if p.pieces]


async def test_simultaneous_arrivals_share_one_pass_and_match_greedy_generate(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    prompts = [prompt_ids(tiny_tokenizer, "서울의 날씨는 어떤가요? " * (i + 1)) for i in range(6)]
    rec = Recorder(tiny_model)
    async with LocalEngine(rec, tiny_tokenizer, arrival_window_s=0.2) as engine:
        texts = await asyncio.gather(*(reply_text(engine, f"s{i}", p, 16)
                                       for i, p in enumerate(prompts)))
    first = rec.prefills()[0]  # one pass, packed: no padding
    assert first.decode == 0 and [length for _, _, length in first.pieces] == [
        len(p) for p in prompts]
    assert list(texts) == [greedy(tiny_model, tiny_tokenizer, p, 16) for p in prompts]


async def test_a_long_join_rides_in_the_decode_steps_in_bounded_chunks(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    short = prompt_ids(tiny_tokenizer, "안녕하세요")
    long = prompt_ids(tiny_tokenizer, "고려대학교에 대해 자세히 알려 주세요. " * 12)
    rec = Recorder(tiny_model)
    async with LocalEngine(rec, tiny_tokenizer, prefill_chunk_tokens=16) as engine:
        first: list[EngineOutput] = []
        running = asyncio.create_task(reply_text(engine, "run", short, 60, first))
        async with asyncio.timeout(30):
            while not first:
                await asyncio.sleep(0.01)
        joined = await reply_text(engine, "join", long, 12)
        ran = await running
    chunks = rec.prefills()[1:]  # after the short prefill
    assert len(chunks) >= len(long) // 16  # the join came in bounded pieces...
    assert all(c.decode == 1 and c.prompt_tokens <= 16 for c in chunks)  # ...in decode steps
    assert [c.pieces[0][1] for c in chunks] == [  # each chunk continues where the last ended
        sum(c.prompt_tokens for c in chunks[:i]) for i in range(len(chunks))]
    assert sum(c.prompt_tokens for c in chunks) == len(long)
    assert ran == greedy(tiny_model, tiny_tokenizer, short, 60)
    assert joined == greedy(tiny_model, tiny_tokenizer, long, 12)


async def test_the_first_arrival_streams_before_the_next_pass_runs(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    a = prompt_ids(tiny_tokenizer, "첫 번째 질문입니다")
    b = prompt_ids(tiny_tokenizer, "두 번째 질문입니다, 조금 더 깁니다. " * 4)
    rec = Recorder(tiny_model)
    got_a = threading.Event()
    waited: list[bool] = []

    def hold_second_prefill(seen: Pass) -> None:
        if seen.pieces and len(rec.prefills()) == 1:  # B's rest waits for A's first token
            waited.append(got_a.wait(20))

    rec.hook = hold_second_prefill
    # a pass holds A and the start of B: the rest of B comes in the next pass
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

        text_a, text_b = await asyncio.gather(first_a(), reply_text(engine, "b", b, 8))
    assert waited == [True]
    assert [length for _, _, length in rec.prefills()[0].pieces] == [len(a), len(b) - len(a)]
    assert text_a == greedy(tiny_model, tiny_tokenizer, a, 8)
    assert text_b == greedy(tiny_model, tiny_tokenizer, b, 8)


async def test_a_request_cancelled_mid_prefill_ends_and_the_others_continue(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    short = prompt_ids(tiny_tokenizer, "안녕하세요")
    long = prompt_ids(tiny_tokenizer, "긴 질문입니다. " * 20)
    rec = Recorder(tiny_model)
    engine = LocalEngine(rec, tiny_tokenizer, prefill_chunk_tokens=16)

    def cancel_at_second_chunk(seen: Pass) -> None:
        if seen.pieces and len(rec.prefills()) == 2:  # the short prompt's pass, one chunk
            engine.cancel("long")

    async with engine:
        first: list[EngineOutput] = []
        running = asyncio.create_task(reply_text(engine, "run", short, 40, first))
        async with asyncio.timeout(30):
            while not first:
                await asyncio.sleep(0.01)
        rec.hook = cancel_at_second_chunk
        outs: list[EngineOutput] = []
        assert await reply_text(engine, "long", long, 20, outs) == ""
        assert outs[-1].finish_reason == "cancelled"
        assert await running == greedy(tiny_model, tiny_tokenizer, short, 40)
    assert sum(c.prompt_tokens for c in rec.prefills()) < len(short) + len(long)


async def test_each_arrival_keeps_its_own_penalty_and_ngram_ban_in_a_shared_pass(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    prompts = [prompt_ids(tiny_tokenizer, f"질문 {i}: 수도는? " * (i + 1)) for i in range(3)]
    settings = [SamplingParams(max_new_tokens=20),
                SamplingParams(max_new_tokens=20, repetition_penalty=1.5),
                SamplingParams(max_new_tokens=20, no_repeat_ngram_size=2)]
    rec = Recorder(tiny_model)

    async def one(i: int) -> str:
        req = GenerationRequest(f"p{i}", prompts[i], params=settings[i])
        return "".join([out.text async for out in engine.generate(req)])

    async with LocalEngine(rec, tiny_tokenizer, arrival_window_s=0.2) as engine:
        texts = await asyncio.gather(*(one(i) for i in range(3)))
    assert len(rec.prefills()[0].pieces) == 3
    for text, ids, p in zip(texts, prompts, settings, strict=True):
        out = tiny_model.generate(
            torch.tensor([ids]), max_new_tokens=20, do_sample=False,
            repetition_penalty=p.repetition_penalty, no_repeat_ngram_size=p.no_repeat_ngram_size)
        assert text == tiny_tokenizer.decode(out[0][len(ids):], skip_special_tokens=True)


async def test_a_seeded_request_samples_the_same_reply_again(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    ids = prompt_ids(tiny_tokenizer, "오늘 점심 메뉴를 추천해 주세요")
    params = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=7)
    async with LocalEngine(tiny_model, tiny_tokenizer) as engine:
        replies = []
        for i in range(2):
            req = GenerationRequest(f"seed{i}", ids, params=params)
            replies.append("".join([out.text async for out in engine.generate(req)]))
    assert replies[0] == replies[1] != ""


async def test_a_seeded_request_samples_the_same_reply_alone_and_in_a_batch(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    ids = prompt_ids(tiny_tokenizer, "주말에 갈 만한 곳은?")
    seeded = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=11)
    others = SamplingParams(max_new_tokens=16, temperature=1.0)

    async def reply(engine: LocalEngine, rid: str, params: SamplingParams) -> str:
        req = GenerationRequest(rid, ids, params=params)
        return "".join([out.text async for out in engine.generate(req)])

    async with LocalEngine(tiny_model, tiny_tokenizer, arrival_window_s=0.2) as engine:
        alone = await reply(engine, "alone", seeded)
        together = await asyncio.gather(reply(engine, "o1", others), reply(engine, "s", seeded),
                                        reply(engine, "o2", others))
    assert together[1] == alone != ""


@pytest.mark.parametrize("dense", [False, True], ids=["eager", "bucketed"])
async def test_slots_are_reused_as_requests_leave_and_join(
    tiny_model: Any, tiny_tokenizer: Any, dense: bool
) -> None:
    prompts = [prompt_ids(tiny_tokenizer, f"{i}번 질문: 고려대는 어디?") for i in range(5)]
    lengths = [4, 30, 8, 20, 12]  # slot 0 frees first and is taken again below slot 1
    rec = Recorder(tiny_model)
    async with LocalEngine(rec, tiny_tokenizer, max_batch_size=2,
                           decode_graphs=dense) as engine:
        assert engine.slots == engine.kv_slots == 2
        texts = await asyncio.gather(*(reply_text(engine, f"r{i}", p, n) for i, (p, n) in
                                       enumerate(zip(prompts, lengths, strict=True))))
    assert max(p.decode for p in rec.passes) == 2  # never more rows than slots
    assert {slot for p in rec.prefills() for slot, _, _ in p.pieces} == {0, 1}
    assert list(texts) == [greedy(tiny_model, tiny_tokenizer, p, n)
                           for p, n in zip(prompts, lengths, strict=True)]


@pytest.mark.parametrize("dense", [False, True], ids=["eager", "bucketed"])
async def test_a_decoding_hole_below_a_running_slot_changes_no_output(
    tiny_model: Any, tiny_tokenizer: Any, dense: bool
) -> None:
    """Bucketed: the passes a CUDA graph replays (dense rows, fixed width), run eagerly."""
    prompts = [prompt_ids(tiny_tokenizer, f"{i}번: 서울의 인구는?") for i in range(3)]
    rec = Recorder(tiny_model)
    async with LocalEngine(rec, tiny_tokenizer, arrival_window_s=0.2,
                           decode_graphs=dense) as engine:
        # slots 0, 1, 2; slot 1 ends first, so slots 0 and 2 decode across a free slot
        texts = await asyncio.gather(*(reply_text(engine, f"h{i}", p, n) for i, (p, n) in
                                       enumerate(zip(prompts, (24, 3, 24), strict=True))))
    assert list(texts) == [greedy(tiny_model, tiny_tokenizer, p, n)
                           for p, n in zip(prompts, (24, 3, 24), strict=True)]
    if dense:  # three rows then two across the hole: every step computed the 4-row bucket
        assert {p.decode for p in rec.passes if not p.pieces} == {4}


async def test_a_prompt_longer_than_the_context_fails_alone_and_replies_stop_at_the_context(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    fits = prompt_ids(tiny_tokenizer, "짧은 질문")
    async with LocalEngine(tiny_model, tiny_tokenizer, max_len=len(fits) + 5) as engine:
        outs: list[EngineOutput] = []
        text = await reply_text(engine, "fits", fits, 50, outs)
        too_long = GenerationRequest("long", fits * 3, params=SamplingParams(max_new_tokens=4))
        try:
            async for _ in engine.generate(too_long):
                raise AssertionError("a prompt over the context was generated")
        except ValueError as exc:
            assert "does not fit" in str(exc)
        assert await reply_text(engine, "again", fits, 3) == greedy(tiny_model, tiny_tokenizer,
                                                                fits, 3)
    assert outs[-1].finish_reason == "length" and sum(o.tokens for o in outs) == 5
    assert text == greedy(tiny_model, tiny_tokenizer, fits, 5)


@pytest.mark.parametrize("dense", [False, True], ids=["eager", "bucketed"])
async def test_a_decode_step_reads_the_device_once(
    tiny_model: Any, tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch, dense: bool
) -> None:
    """No device read in a decode-only pass but the one copy of its sampled tokens (on a GPU
    any other would stall the step), with penalties, n-gram bans and sampling on."""
    reads: list[int] = []
    uploads: list[int] = []
    tolist = torch.Tensor.tolist

    def counted(self: torch.Tensor) -> Any:
        if reads and reads[-1] >= 0:  # inside a watched pass
            reads[-1] += 1
        return tolist(self)

    step = LocalEngine._pass

    def watched(engine: LocalEngine) -> bool:
        decode_only = bool(engine._decoding) and not engine._waiting and not engine._filling
        if not decode_only or not engine._incoming.empty():
            return step(engine)
        reads.append(0)
        try:
            with HostSync(allow_uploads=True) as mode:
                return step(engine)
        finally:
            reads.append(-1)
            uploads.append(mode.uploads)

    monkeypatch.setattr(torch.Tensor, "tolist", counted)
    monkeypatch.setattr(LocalEngine, "_pass", watched)
    params = [SamplingParams(max_new_tokens=12, repetition_penalty=1.2),
              SamplingParams(max_new_tokens=12, no_repeat_ngram_size=3, temperature=0.8),
              SamplingParams(max_new_tokens=12, temperature=0.7, top_p=0.9, seed=3)]
    ids = prompt_ids(tiny_tokenizer, "한국의 전통 음식을 소개해 주세요")
    async with LocalEngine(tiny_model, tiny_tokenizer, arrival_window_s=0.2,
                           decode_graphs=dense) as engine:
        outs = await asyncio.gather(*(
            outputs(engine, GenerationRequest(f"d{i}", ids, params=p))
            for i, p in enumerate(params)))
    assert all(out[-1].finish_reason == "length" for out in outs)
    passes = [n for n in reads if n >= 0]
    assert len(passes) >= 10 and set(passes) == {1}
    # host-to-device copies (which do not wait) only when the rows change: the first decode
    # step and one after each of the three requests leaves
    assert sum(1 for n in uploads if n) <= 4

