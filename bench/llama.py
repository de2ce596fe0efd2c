"""The benches' model and anchor: a random Llama of a given shape (SOLAR-10.7B's, or scaled
down), a decoding stand-in for its tokenizer, synthetic prompts, and `model.generate` with the
production sampling, timed per step (`generate_production`), which every engine bench measures
against. Needs only torch and transformers (the GPU image has no pydantic)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

from kullm_core.engine.base import SamplingParams
from kullm_core.engine.slots import plain_attention

PRODUCTION = SamplingParams(temperature=0.7, top_p=0.9, repetition_penalty=1.1)
"""`GenerationSettings`' defaults (tests/bench/test_gpu_check.py keeps them equal; the settings
module itself needs pydantic, which the GPU image lacks)."""

@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    heads: int = 32
    kv_heads: int = 8
    vocab: int = 32000

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        head_dim = self.hidden // self.heads
        return 2 * self.layers * self.kv_heads * head_dim * torch.finfo(dtype).bits // 8



def build(shape: Shape, device: str, dtype: torch.dtype) -> Any:
    # RoPE theta: Llama's default 10,000, SOLAR's too
    cfg = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, max_position_embeddings=4096, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    return model.eval()


class Tok:
    """Decoding stand-in: ids -> Hangul syllables (the engine only needs `decode`)."""

    eos_token_id = 2

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(0xAC00 + (i % 11172)) for i in ids)


def prompt_ids(i: int, n: int, vocab: int) -> list[int]:
    return [1] + [(7919 * i + 31 * j) % (vocab - 100) + 100 for j in range(n - 1)]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Stamps(LogitsProcessor):
    """When each step's logits exist: the first is the first token, the rest decode steps."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.t: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sync(self.device)
        self.t.append(time.perf_counter())
        return scores


def generate_production(model: Any, ids: torch.Tensor, new: int, stamps: Stamps,
                        cache: str = "static", compiled: bool = False) -> torch.Tensor:
    """`model.generate` with the production sampling, exactly `new` tokens per row, through
    transformers' own SDPA (the anchor of every engine benchmark); `stamps` times the steps."""
    kw: dict[str, Any] = {"cache_implementation": "static"} if cache == "static" else {}
    with plain_attention(model):
        return model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
            min_new_tokens=new, do_sample=True, temperature=PRODUCTION.temperature,
            top_p=PRODUCTION.top_p, top_k=0, repetition_penalty=PRODUCTION.repetition_penalty,
            disable_compile=not compiled, pad_token_id=0, eos_token_id=2,
            logits_processor=LogitsProcessorList([stamps]), **kw)
