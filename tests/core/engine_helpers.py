"""The local engine tests' helpers: greedy `generate` as the reference, prompts, replies."""

from __future__ import annotations

from typing import Any

import torch

from kullm_core.engine.base import EngineOutput, GenerationRequest, SamplingParams
from kullm_core.engine.local import LocalEngine


def greedy(model: Any, tok: Any, ids: list[int], n: int) -> str:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return str(tok.decode(out[0][len(ids):], skip_special_tokens=True))


def prompt_ids(tok: Any, text: str) -> list[int]:
    return list(tok(text)["input_ids"])


async def reply_text(engine: LocalEngine, rid: str, ids: list[int], n: int,
                outs: list[EngineOutput] | None = None) -> str:
    req = GenerationRequest(rid, ids, params=SamplingParams(max_new_tokens=n))
    parts = []
    async for out in engine.generate(req):
        parts.append(out.text)
        if outs is not None:
            outs.append(out)
    return "".join(parts)


async def outputs(engine: LocalEngine, req: GenerationRequest) -> list[EngineOutput]:
    return [out async for out in engine.generate(req)]
