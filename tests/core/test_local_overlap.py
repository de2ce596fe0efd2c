"""The local engine's overlap (the next decode step queued before the last one's tokens are
read; the default on CUDA), run on the CPU: it changes no reply, drops the token a row computes
past its end, and a cancel or a stop still ends the streams."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from kullm_core.engine.base import EngineOutput, GenerationRequest, SamplingParams
from kullm_core.engine.local import LocalEngine
from tests.core.engine_helpers import greedy, outputs, prompt_ids


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
            b = await outputs(engine, GenerationRequest("b", ids[1], params=greedy))
            d = await outputs(engine, GenerationRequest("d", ids[2], params=greedy))
            return [b, d]

        a, c, bd = await asyncio.gather(
            outputs(engine, GenerationRequest("a", ids[0], params=greedy)),
            outputs(engine, GenerationRequest("c", ids[2], params=seeded)), b_then_d())
        return [_reply(r) for r in (a, c, *bd)], engine.ahead


@pytest.mark.parametrize("dense", [False, True], ids=["eager", "bucketed"])
async def test_overlapped_steps_change_no_reply_and_drop_the_token_past_an_end(
    tiny_model: Any, tiny_tokenizer: Any, dense: bool
) -> None:
    """Overlap (the default on CUDA), run on the CPU: a decode step is queued before the last
    one's tokens are read. Every reply is what it is without overlap: greedy ones equal to
    `generate`, a seeded one the same draw, one ended by its end-of-sequence token (its extra
    token dropped), and one that reuses its slot afterwards."""
    ids = [prompt_ids(tiny_tokenizer, f"{i}번: 고려대학교를 소개해 줘") for i in range(3)]
    k, eos = _ending(tiny_model, ids)
    plain, ahead_off = await _run_overlap_case(tiny_model, tiny_tokenizer, ids, eos, False,
                                               dense)
    over, ahead_on = await _run_overlap_case(tiny_model, tiny_tokenizer, ids, eos, True, dense)
    assert ahead_off == 0 and ahead_on > 10
    assert over == plain
    a, c, b, d = over
    assert a == (greedy(tiny_model, tiny_tokenizer, ids[0], 24), 24, "length")
    assert b == (greedy(tiny_model, tiny_tokenizer, ids[1], k), k + 1, "stop")
    assert d == (greedy(tiny_model, tiny_tokenizer, ids[2], 24), 24, "length")
    assert c[1:] == (16, "length")


async def test_with_overlap_a_cancel_and_a_stop_end_the_streams_they_hit(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    """Overlap on (the CUDA default), on the CPU: a request cancelled mid-stream ends
    "cancelled" within a few steps, and stopping the engine ends the one still running."""
    ids = prompt_ids(tiny_tokenizer, "길게 설명해 주세요")
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
    full = greedy(tiny_model, tiny_tokenizer, ids, 400)
    for rid in outs:
        assert full.startswith("".join(o.text for o in outs[rid]))
