"""A tiny random-weight Llama with a Korean-capable tokenizer and KULLM3's chat template.

Built offline in seconds, saved like a real model folder, and loaded through the same code
path as KULLM3. For tests and for trying the bot without a GPU: its replies are gibberish.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

# Llama-2-chat style, as KULLM3 renders: <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]
# {assistant} </s><s>[INST] {user 2} [/INST]. Without a system message it uses the default
# prompt (the sentences joined with spaces), unless the first message already has <<SYS>>.
DEFAULT_SYSTEM_ONE_LINE = (
    "당신은 고려대학교 NLP&AI 연구실에서 만든 AI 챗봇입니다. 당신의 이름은 'KULLM'으로, "
    "한국어로는 '구름'을 뜻합니다. 당신은 비도덕적이거나, 성적이거나, 불법적이거나 또는 사회 "
    "통념적으로 허용되지 않는 발언은 하지 않습니다. 사용자와 즐겁게 대화하며, 사용자의 응답에 "
    "가능한 정확하고 친절하게 응답함으로써 최대한 도와주려고 노력합니다. 질문이 이상하다면, 어떤 "
    "부분이 이상한지 설명합니다. 거짓 정보를 발언하지 않도록 주의합니다."
)

CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% elif not '<<SYS>>' in messages[0]['content'] %}"
    "{% set loop_messages = messages %}"
    "{% set system_message = \"" + DEFAULT_SYSTEM_ONE_LINE + "\" %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

SPECIALS = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def _corpus() -> list[str]:
    raw = resources.files("kullm_core").joinpath("data/prompts_ko.jsonl").read_text("utf-8")
    texts = [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
    texts.append(DEFAULT_SYSTEM_ONE_LINE)
    texts.append("[INST] [/INST] <<SYS>> <</SYS>> Hello world, the quick brown fox. 1234567890")
    return texts


def _train_tokenizer(vocab_size: int):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    # Few Hangul syllables in the base alphabet: rarer ones go through byte fallback, the
    # way KULLM3's SentencePiece vocabulary handles characters it lacks.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, limit_alphabet=400, show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    ordered = SPECIALS + BYTE_TOKENS + [
        t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in SPECIALS
    ]
    spec["model"]["vocab"] = {t: i for i, t in enumerate(ordered)}
    spec["added_tokens"] = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, t in enumerate(SPECIALS)
    ]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
         decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok


def _packaged_tokenizer():  # type: ignore[no-untyped-def]
    """The tokenizer trained once by `_train_tokenizer` and shipped (BPE training is not
    deterministic across runs; tests need the same vocabulary every time)."""
    from tokenizers import Tokenizer

    raw = resources.files("kullm_core").joinpath("data/tiny_tokenizer.json").read_text("utf-8")
    return Tokenizer.from_str(raw)


def build_tiny_model(
    out_dir: Path | str, *, vocab_size: int = 3000, seed: int = 0, retrain: bool = False
) -> Path:
    """Write a tiny KULLM3-shaped model folder (tokenizer + random Llama) to `out_dir`.

    `retrain` trains a fresh tokenizer instead of the packaged one (to regenerate
    `data/tiny_tokenizer.json`).
    """
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = _train_tokenizer(vocab_size) if retrain else _packaged_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        chat_template=CHAT_TEMPLATE, model_max_length=4096, clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=raw.get_vocab_size(), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        initializer_range=0.25, tie_word_embeddings=False, rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Random weights rarely pick </s>; make it never win so lengths are predictable.
        model.lm_head.weight[config.eos_token_id].zero_()
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=False
    )
    model.save_pretrained(out)
    (out / "TINY_MODEL").write_text(
        "Random weights, built by `kullm tiny-model`. Replies are gibberish.\n", "utf-8"
    )
    log.info("tiny model written to %s (vocab %d)", out, config.vocab_size)
    return out
