"""`kullm eval` on the command line: its options, `--set`, `--compare`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from kullm_core.errors import ConfigError
from kullm_core.settings import Settings, load_settings

DESCRIPTION = (
    "Answer the 252 Korean user-oriented instructions KULLM3's authors evaluated on, through "
    "the real pipeline (queue, worker, the configured engine, prompt and generation settings; "
    "each a fresh conversation), have an OpenAI-compatible judge score each answer with the "
    "card's G-Eval prompt (Fluency, Coherence, Accuracy, Completeness, Overall Quality, 1-5), "
    "and write DIR/items.jsonl and DIR/report.json. Rerun with the same --out to resume. "
    "`--compare A B` compares two runs.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge-url", help="the judge's OpenAI-compatible base URL, e.g. "
                   "https://api.openai.com/v1")
    p.add_argument("--judge-model", help="the judge model (the card's: gpt-4-0125-preview)")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the judge's API key (default: "
                   "OPENAI_API_KEY; unset: no key is sent)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N instructions")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="results folder (default: <data_dir>/eval/<UTC time>); an existing "
                   "one is resumed")
    p.add_argument("--concurrency", type=int, default=4, metavar="C",
                   help="instructions in flight at once (default 4)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="sampling seed (generation.seed) and bootstrap seed (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   dest="overrides", help="override a setting for this run, e.g. "
                   "generation.repetition_penalty=1.0 or generation.system_prompt_mode=none")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("DIR_A", "DIR_B"),
                   help="compare two runs (B - A) instead of running")


def parse_overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """`generation.top_p=0.8` -> {"generation": {"top_p": "0.8"}} (the settings validate and
    convert; a value starting with [ or { is JSON, `null` is None)."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(f"--set {pair!r}: write SECTION.FIELD=VALUE, e.g. "
                              "generation.temperature=0")
        value: Any = raw
        if raw.strip()[:1] in ("[", "{"):
            try:
                value = json.loads(raw)
            except ValueError:
                raise ConfigError(f"--set {pair!r}: the value is not valid JSON") from None
        elif raw.strip() == "null":
            value = None
        out.setdefault(section, {})[name] = value
    return out


def eval_run_settings(config: Path | None, args: argparse.Namespace) -> Settings:
    overrides = parse_overrides(args.overrides)
    overrides.setdefault("generation", {}).setdefault("seed", args.seed)
    return load_settings(config, **overrides)


async def main(args: argparse.Namespace, settings: Settings, config: Path | None) -> int:
    from kullm.eval.report import compare, print_compare

    if args.compare:
        cmp = compare(args.compare[0], args.compare[1], seed=args.seed)
        print_compare(cmp, sys.stdout)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "compare.json").write_text(
                json.dumps(cmp, ensure_ascii=False, indent=2) + "\n", "utf-8")
        return 0
    if not args.judge_url or not args.judge_model:
        raise ConfigError("kullm eval needs --judge-url and --judge-model (or --compare A B)")
    from kullm.eval.run import EvalOptions, run_eval

    run_settings = eval_run_settings(config, args)
    out = args.out or settings.data_dir / "eval" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    opts = EvalOptions(
        judge_url=args.judge_url, judge_model=args.judge_model, out=out,
        judge_key=os.environ.get(args.judge_key_env, ""), limit=args.limit,
        concurrency=args.concurrency, seed=args.seed,
    )
    await run_eval(run_settings, opts)
    return 0
