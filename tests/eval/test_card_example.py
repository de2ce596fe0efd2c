"""The model card's example, both ways, on the tiny model: `kullm chat --once "고려대학교에 대해서
알고 있니?"` with the card's settings (greedy, max_new_tokens=1024, no repetition penalty)
gives the same ids in and the same text out as the card's own `model.generate` code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis

from kullm_core.texts import finish_note

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

QUESTION = "고려대학교에 대해서 알고 있니?"


def _card_code(model_dir: str) -> tuple[list[int], str]:
    """The card's Python code as printed, on CPU (no fp16/cuda): (ids in, text out). With
    transformers 5 `apply_chat_template(..., return_tensors='pt')` returns a BatchEncoding:
    its input_ids are what transformers 4.38, the card's version, returned."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    conversation = [{"role": "user", "content": QUESTION}]
    inputs = tokenizer.apply_chat_template(
        conversation, tokenize=True, add_generation_prompt=True, return_tensors="pt")
    inputs = inputs["input_ids"] if hasattr(inputs, "keys") else inputs
    _ = model.generate(inputs, streamer=streamer, max_new_tokens=1024)
    text = tokenizer.decode(_[0][inputs.shape[1]:], skip_special_tokens=True)
    return [int(i) for i in inputs[0]], str(text)


def test_kullm_chat_once_reproduces_the_cards_generate(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = tmp_path / "card.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[redis]\nurl = "{redis_url}"\nprefix = "card"\n'
        f'[model]\npath = "{tiny_model_dir}"\n'
        "[generation]\ntemperature = 0.0\nrepetition_penalty = 1.0\nmax_new_tokens = 1024\n",
        "utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KULLM_")}
    chat = subprocess.run(
        [sys.executable, "-m", "kullm.cli", "--config", str(cfg), "chat", "--once", QUESTION],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert chat.returncode == 0, chat.stderr
    chat_out = chat.stdout

    card_ids, card_text = _card_code(str(tiny_model_dir))
    printed = capsys.readouterr().out
    assert len(card_text) > 1000
    # the same text out (kullm chat adds its mark for an answer cut at max_new_tokens)
    assert chat_out == card_text + "\n" + finish_note("length", "ko") + "\n"
    # TextStreamer decodes line by line, and a line's first space is lost in that decode:
    # what it prints differs from the generated text in whitespace only
    assert printed.split() == card_text.split()

    # the same ids in: the worker's prompt, as its started event counted it, and its text
    r = Redis.from_url(redis_url)
    try:
        [stream] = r.keys("card:reply:*")
        events = [json.loads(f[b"e"]) for _, f in r.xrange(stream)]
        [conv] = r.keys("card:conv:*")
        [turn] = [json.loads(x) for x in r.lrange(conv, 0, -1)]
    finally:
        r.close()
    started = next(e for e in events if e["type"] == "started")
    done = events[-1]
    assert started["prompt_tokens"] == len(card_ids) == 153
    assert done["completion_tokens"] == 1024 and done["text"] == card_text == turn["assistant"]
