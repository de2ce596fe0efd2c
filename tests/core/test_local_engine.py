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


async def _outputs(engine: LocalEngine, req: GenerationRequest) -> list[EngineOutput]:
    return [out async for out in engine.generate(req)]


async def test_simultaneous_arrivals_share_one_pass_and_match_greedy_generate(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    prompts = [_prompt(tiny_tokenizer, "서울의 날씨는 어떤가요? " * (i + 1)) for i in range(6)]
    rec = Recorder(tiny_model)
    async with LocalEngine(rec, tiny_tokenizer, arrival_window_s=0.2) as engine:
        texts = await asyncio.gather(*(_text(engine, f"s{i}", p, 16)
                                       for i, p in enumerate(prompts)))
    first = rec.prefills()[0]  # one pass, packed: no padding
    assert first.decode == 0 and [length for _, _, length in first.pieces] == [
        len(p) for p in prompts]
    assert list(texts) == [_greedy(tiny_model, tiny_tokenizer, p, 16) for p in prompts]


async def test_a_long_join_rides_in_the_decode_steps_in_bounded_chunks(
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
    chunks = rec.prefills()[1:]  # after the short prefill
    assert len(chunks) >= len(long) // 16  # the join came in bounded pieces...
    assert all(c.decode == 1 and c.prompt_tokens <= 16 for c in chunks)  # ...in decode steps
    assert [c.pieces[0][1] for c in chunks] == [  # each chunk continues where the last ended
        sum(c.prompt_tokens for c in chunks[:i]) for i in range(len(chunks))]
    assert sum(c.prompt_tokens for c in chunks) == len(long)
    assert ran == _greedy(tiny_model, tiny_tokenizer, short, 60)
    assert joined == _greedy(tiny_model, tiny_tokenizer, long, 12)


async def test_the_first_arrival_streams_before_the_next_pass_runs(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    a = _prompt(tiny_tokenizer, "첫 번째 질문입니다")
    b = _prompt(tiny_tokenizer, "두 번째 질문입니다, 조금 더 깁니다. " * 4)
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

        text_a, text_b = await asyncio.gather(first_a(), _text(engine, "b", b, 8))
    assert waited == [True]
    assert [length for _, _, length in rec.prefills()[0].pieces] == [len(a), len(b) - len(a)]
    assert text_a == _greedy(tiny_model, tiny_tokenizer, a, 8)
    assert text_b == _greedy(tiny_model, tiny_tokenizer, b, 8)


async def test_a_request_cancelled_mid_prefill_ends_and_the_others_continue(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    short = _prompt(tiny_tokenizer, "안녕하세요")
    long = _prompt(tiny_tokenizer, "긴 질문입니다. " * 20)
    rec = Recorder(tiny_model)
    engine = LocalEngine(rec, tiny_tokenizer, prefill_chunk_tokens=16)

    def cancel_at_second_chunk(seen: Pass) -> None:
        if seen.pieces and len(rec.prefills()) == 2:  # the short prompt's pass, one chunk
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
    assert sum(c.prompt_tokens for c in rec.prefills()) < len(short) + len(long)


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
    assert len(rec.prefills()[0].pieces) == 3
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


async def test_a_seeded_request_samples_the_same_reply_alone_and_in_a_batch(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    ids = _prompt(tiny_tokenizer, "주말에 갈 만한 곳은?")
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
    prompts = [_prompt(tiny_tokenizer, f"{i}번 질문: 고려대는 어디?") for i in range(5)]
    lengths = [4, 30, 8, 20, 12]  # slot 0 frees first and is taken again below slot 1
    rec = Recorder(tiny_model)
    async with LocalEngine(rec, tiny_tokenizer, max_batch_size=2,
                           decode_graphs=dense) as engine:
        assert engine.slots == engine.kv_slots == 2
        texts = await asyncio.gather(*(_text(engine, f"r{i}", p, n) for i, (p, n) in
                                       enumerate(zip(prompts, lengths, strict=True))))
    assert max(p.decode for p in rec.passes) == 2  # never more rows than slots
    assert {slot for p in rec.prefills() for slot, _, _ in p.pieces} == {0, 1}
    assert list(texts) == [_greedy(tiny_model, tiny_tokenizer, p, n)
                           for p, n in zip(prompts, lengths, strict=True)]


@pytest.mark.parametrize("dense", [False, True], ids=["eager", "bucketed"])
async def test_a_decoding_hole_below_a_running_slot_changes_no_output(
    tiny_model: Any, tiny_tokenizer: Any, dense: bool
) -> None:
    """Bucketed: the passes a CUDA graph replays (dense rows, fixed width), run eagerly."""
    prompts = [_prompt(tiny_tokenizer, f"{i}번: 서울의 인구는?") for i in range(3)]
    rec = Recorder(tiny_model)
    async with LocalEngine(rec, tiny_tokenizer, arrival_window_s=0.2,
                           decode_graphs=dense) as engine:
        # slots 0, 1, 2; slot 1 ends first, so slots 0 and 2 decode across a free slot
        texts = await asyncio.gather(*(_text(engine, f"h{i}", p, n) for i, (p, n) in
                                       enumerate(zip(prompts, (24, 3, 24), strict=True))))
    assert list(texts) == [_greedy(tiny_model, tiny_tokenizer, p, n)
                           for p, n in zip(prompts, (24, 3, 24), strict=True)]
    if dense:  # three rows then two across the hole: every step computed the 4-row bucket
        assert {p.decode for p in rec.passes if not p.pieces} == {4}


async def test_a_prompt_longer_than_the_context_fails_alone_and_replies_stop_at_the_context(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    fits = _prompt(tiny_tokenizer, "짧은 질문")
    async with LocalEngine(tiny_model, tiny_tokenizer, max_len=len(fits) + 5) as engine:
        outs: list[EngineOutput] = []
        text = await _text(engine, "fits", fits, 50, outs)
        too_long = GenerationRequest("long", fits * 3, params=SamplingParams(max_new_tokens=4))
        try:
            async for _ in engine.generate(too_long):
                raise AssertionError("a prompt over the context was generated")
        except ValueError as exc:
            assert "does not fit" in str(exc)
        assert await _text(engine, "again", fits, 3) == _greedy(tiny_model, tiny_tokenizer,
                                                                fits, 3)
    assert outs[-1].finish_reason == "length" and sum(o.tokens for o in outs) == 5
    assert text == _greedy(tiny_model, tiny_tokenizer, fits, 5)


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
    ids = _prompt(tiny_tokenizer, "한국의 전통 음식을 소개해 주세요")
    async with LocalEngine(tiny_model, tiny_tokenizer, arrival_window_s=0.2,
                           decode_graphs=dense) as engine:
        outs = await asyncio.gather(*(
            _outputs(engine, GenerationRequest(f"d{i}", ids, params=p))
            for i, p in enumerate(params)))
    assert all(out[-1].finish_reason == "length" for out in outs)
    passes = [n for n in reads if n >= 0]
    assert len(passes) >= 10 and set(passes) == {1}
    # host-to-device copies (which do not wait) only when the rows change: the first decode
    # step and one after each of the three requests leaves
    assert sum(1 for n in uploads if n) <= 4


def _reply(outs: list[EngineOutput]) -> tuple[str, int, str | None]:
    """What a reply came to (how it was cut into outputs depends on the consumer's pace)."""
    return "".join(o.text for o in outs), sum(o.tokens for o in outs), outs[-1].finish_reason


def _ending(model: Any, ids: list[list[int]]) -> tuple[int, int]:
    """(k, token): greedy decoding of ids[1] gives `token` first as its k-th new token, and
    24 greedy tokens of ids[0] and ids[2] never do."""
    def greedy(p: list[int], n: int) -> list[int]:
        out = model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False)
        return [int(t) for t in out[0][len(p):]]
    new, others = greedy(ids[1], 12), set(greedy(ids[0], 24) + greedy(ids[2], 24))
    k = next(k for k in range(4, len(new)) if new[k] not in {*new[:k], *others})
    return k, new[k]


async def _run_overlap_case(model: Any, tok: Any, ids: list[list[int]], eos: int, overlap: bool,
                            dense: bool) -> tuple[list[tuple[str, int, str | None]], int]:
    greedy = SamplingParams(max_new_tokens=24)
    seeded = SamplingParams(max_new_tokens=16, temperature=0.8, top_p=0.9, seed=11)
    async with LocalEngine(model, tok, arrival_window_s=0.2, decode_graphs=dense,
                           overlap=overlap) as engine:
        # `eos` ends request b: the step queued behind that one computed a token past its
        # end, which must never reach anyone
        engine.eos_ids = {eos}

        async def b_then_d() -> list[list[EngineOutput]]:
            b = await _outputs(engine, GenerationRequest("b", ids[1], params=greedy))
            d = await _outputs(engine, GenerationRequest("d", ids[2], params=greedy))
            return [b, d]

        a, c, bd = await asyncio.gather(
            _outputs(engine, GenerationRequest("a", ids[0], params=greedy)),
            _outputs(engine, GenerationRequest("c", ids[2], params=seeded)), b_then_d())
        return [_reply(r) for r in (a, c, *bd)], engine.ahead


@pytest.mark.parametrize("dense", [False, True], ids=["eager", "bucketed"])
async def test_overlapped_steps_change_no_reply_and_drop_the_token_past_an_end(
    tiny_model: Any, tiny_tokenizer: Any, dense: bool
) -> None:
    """Overlap (the default on CUDA), run on the CPU: a decode step is queued before the last
    one's tokens are read. Every reply is what it is without overlap: greedy ones equal to
    `generate`, a seeded one the same draw, one ended by its end-of-sequence token (its extra
    token dropped), and one that reuses its slot afterwards."""
    ids = [_prompt(tiny_tokenizer, f"{i}번: 고려대학교를 소개해 줘") for i in range(3)]
    k, eos = _ending(tiny_model, ids)
    plain, ahead_off = await _run_overlap_case(tiny_model, tiny_tokenizer, ids, eos, False,
                                               dense)
    over, ahead_on = await _run_overlap_case(tiny_model, tiny_tokenizer, ids, eos, True, dense)
    assert ahead_off == 0 and ahead_on > 10
    assert over == plain
    a, c, b, d = over
    assert a == (_greedy(tiny_model, tiny_tokenizer, ids[0], 24), 24, "length")
    assert b == (_greedy(tiny_model, tiny_tokenizer, ids[1], k), k + 1, "stop")
    assert d == (_greedy(tiny_model, tiny_tokenizer, ids[2], 24), 24, "length")
    assert c[1:] == (16, "length")


async def test_with_overlap_a_cancel_and_a_stop_end_the_streams_they_hit(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    """Overlap on (the CUDA default), on the CPU: a request cancelled mid-stream ends
    "cancelled" within a few steps, and stopping the engine ends the one still running."""
    ids = _prompt(tiny_tokenizer, "길게 설명해 주세요")
    engine = LocalEngine(tiny_model, tiny_tokenizer, overlap=True, arrival_window_s=0.2)
    await engine.start()
    outs: dict[str, list[EngineOutput]] = {"a": [], "b": []}

    async def consume(rid: str) -> None:
        req = GenerationRequest(rid, ids, params=SamplingParams(max_new_tokens=400))
        async for out in engine.generate(req):
            outs[rid].append(out)

    tasks = [asyncio.create_task(consume(r)) for r in outs]
    async with asyncio.timeout(60):
        while sum(o.tokens for o in outs["a"]) < 8:
            await asyncio.sleep(0.01)
        engine.cancel("a")
        await tasks[0]
        at_cancel = sum(o.tokens for o in outs["b"])
        await engine.stop()
        await tasks[1]
    a_tokens = sum(o.tokens for o in outs["a"])
    assert outs["a"][-1].finish_reason == "cancelled" and 8 <= a_tokens < 400
    assert outs["b"][-1].finish_reason == "cancelled"
    assert at_cancel <= sum(o.tokens for o in outs["b"]) < 400
    assert engine.ahead > 0
    # what each got is the start of its greedy reply: nothing of a dropped extra step leaked
    full = _greedy(tiny_model, tiny_tokenizer, ids, 400)
    for rid in outs:
        assert full.startswith("".join(o.text for o in outs[rid]))
