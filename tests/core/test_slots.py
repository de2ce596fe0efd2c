"""The packed pass over the per-slot KV: decode rows and prompt pieces in one forward give the
logits each request would get from its own plain forward, with the KV written in place."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from kullm_core.engine.slots import (
    Piece,
    SlotKV,
    _masked,
    current_plan,
    kv_bytes_per_token,
    plain_attention,
    planned,
)


def _last_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


def _packed(model: Any, kv: SlotKV, decode: list[tuple[int, int]],
            pieces: list[tuple[Piece, list[int]]]) -> torch.Tensor:
    """One pass: `decode` (slot, next token) rows, then prompt pieces; logits of each decode
    row and of each piece's last token."""
    slots = [s for s, _ in decode]
    widths = [int(kv.lengths[s]) + 1 for s in slots]
    plan = kv.plan(slots, widths, [p for p, _ in pieces])
    ids = [t for _, t in decode] + [t for _, toks in pieces for t in toks]
    keep, end = list(range(len(decode))), len(decode)
    for p, _ in pieces:
        end += p.length
        keep.append(end - 1)
    with torch.inference_mode(), planned(plan):
        assert current_plan() is plan
        out = model(input_ids=torch.tensor([ids]), position_ids=plan.positions.view(1, -1),
                    use_cache=False, logits_to_keep=torch.tensor(keep))
    assert current_plan() is None
    kv.advance(plan)
    return out.logits[0]


@pytest.fixture
def model(tiny_model: Any) -> Any:
    from kullm_core.engine.slots import use_slot_attention

    use_slot_attention(tiny_model)
    return tiny_model


def test_pieces_chunks_and_decode_rows_in_one_pass_match_plain_forwards(model: Any) -> None:
    gen = torch.Generator().manual_seed(3)
    a, b, c = (torch.randint(3, 2000, (n,), generator=gen).tolist() for n in (9, 14, 6))
    kv = SlotKV(model.config, 6, 64, torch.device("cpu"), torch.float32)
    # pass 1: prompt a whole in slot 4, the first 8 tokens of b in slot 1
    first = _packed(model, kv, [], [(Piece(4, 0, 9), a), (Piece(1, 0, 8), b[:8])])
    torch.testing.assert_close(first[0], _last_logits(model, a))
    torch.testing.assert_close(first[1], _last_logits(model, b[:8]))
    # pass 2: slot 4 decodes one token across free slots 0..3 while b's rest and c join
    nxt = int(first[0].argmax())
    second = _packed(model, kv, [(4, nxt)], [(Piece(1, 8, 6), b[8:]), (Piece(0, 0, 6), c)])
    torch.testing.assert_close(second[0], _last_logits(model, [*a, nxt]))
    torch.testing.assert_close(second[1], _last_logits(model, b))
    torch.testing.assert_close(second[2], _last_logits(model, c))
    # pass 3: three rows decode together (slots 0, 1, 4: no copy of any slot's cache)
    toks = [int(second[2].argmax()), int(second[1].argmax()), int(second[0].argmax())]
    third = _packed(model, kv, list(zip([0, 1, 4], toks, strict=True)), [])
    nxt2 = toks[2]
    torch.testing.assert_close(third[0], _last_logits(model, [*c, toks[0]]))
    torch.testing.assert_close(third[1], _last_logits(model, [*b, toks[1]]))
    torch.testing.assert_close(third[2], _last_logits(model, [*a, nxt, nxt2]))
    assert kv.lengths.tolist() == [7, 15, 0, 0, 11, 0]


def test_a_reused_slot_sees_nothing_of_its_last_request(model: Any) -> None:
    kv = SlotKV(model.config, 2, 64, torch.device("cpu"), torch.float32)
    old, new = list(range(100, 140)), list(range(200, 205))
    _packed(model, kv, [], [(Piece(0, 0, 40), old)])
    logits = _packed(model, kv, [], [(Piece(0, 0, 5), new)])
    torch.testing.assert_close(logits[0], _last_logits(model, new))
    nxt = int(logits[0].argmax())
    step = _packed(model, kv, [(0, nxt)], [])
    torch.testing.assert_close(step[0], _last_logits(model, [*new, nxt]))


def test_outside_a_plan_the_model_is_plain_sdpa(model: Any) -> None:
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        got = model.generate(ids, max_new_tokens=6, do_sample=False)
        with plain_attention(model):
            want = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert model.config._attn_implementation == "kullm_slots"
    assert got.tolist() == want.tolist()


def test_the_cache_is_sized_by_the_config() -> None:
    from transformers import LlamaConfig

    solar = LlamaConfig(num_hidden_layers=48, hidden_size=4096, num_attention_heads=32,
                        num_key_value_heads=8)
    assert kv_bytes_per_token(solar, torch.bfloat16) == 192 * 1024  # the README's 192 KiB


@pytest.mark.parametrize("folded", [False, True], ids=["grouped-query", "heads-folded (CUDA)"])
def test_a_later_chunk_attends_to_its_slot_alike_in_both_layouts(folded: bool) -> None:
    """Both ways `_masked` lays out grouped-query heads (CUDA folds them into the length axis)
    give repeat-the-KV-heads attention under the chunk's causal offset mask."""
    torch.manual_seed(0)
    heads, kv_heads, start, length, dim = 8, 2, 5, 3, 16
    q = torch.randn(1, heads, length, dim)
    k, v = torch.randn(kv_heads, start + length, dim), torch.randn(kv_heads, start + length, dim)
    cols = torch.arange(start + length).view(1, -1)
    mask = cols <= torch.arange(start, start + length).view(-1, 1)  # row i sees <= start + i
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(heads // kv_heads, 0).unsqueeze(0),
        v.repeat_interleave(heads // kv_heads, 0).unsqueeze(0), attn_mask=mask)[0]
    got = _masked(q, k, v, mask, None, folded=folded)
    assert got.shape == (heads, length, dim)
    torch.testing.assert_close(got, want)
