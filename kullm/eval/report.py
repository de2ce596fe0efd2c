"""`kullm eval`'s results: DIR/items.jsonl read back, DIR/report.json, the printed tables, and
`--compare` of two runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from kullm.eval.judge import CRITERIA
from kullm.eval.measures import summarize
from kullm.eval.stats import paired_difference, summary
from kullm_core.errors import ConfigError

ITEMS = "items.jsonl"
REPORT = "report.json"
RUN = "run.json"

_LOCAL_LABELS = {
    "repeated_3gram_share": "repeated 3-grams",
    "repeated_4gram_share": "repeated 4-grams",
    "ends_in_loop_share": "answers ending in a loop",
    "cut_at_max_new_tokens_share": "answers cut at max_new_tokens",
    "empty_share": "empty answers",
    "hangul_share": "Hangul share of letters",
}


def read_items(out: Path) -> dict[str, dict[str, Any]]:
    """The latest record of each item (a resumed run appends; the last line of an id wins).
    A torn last line (the run was killed while writing) is ignored."""
    path = out / ITEMS
    records: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return records
    for line in path.read_text("utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "id" in rec:
            records[str(rec["id"])] = rec
    return records


def scored(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {i: r["scores"] for i, r in records.items() if r.get("status") == "ok"}


def build_report(out: Path, seed: int = 0) -> dict[str, Any]:
    """report.json's content: `n` judged, `failed`, `means` by criterion with 95% bootstrap
    intervals, the local measures, and the run's settings."""
    records = read_items(out)
    ok = scored(records)
    means = {c: summary([s[c] for s in ok.values()], seed=seed) for c in CRITERIA} if ok else {}
    answered = [r for r in records.values() if r.get("measures")]
    run = json.loads((out / RUN).read_text("utf-8")) if (out / RUN).exists() else {}
    return {
        "n": len(ok),
        "failed": sum(1 for r in records.values() if r.get("status") == "failed"),
        "unjudged": sum(1 for r in records.values() if r.get("status") == "unjudged"),
        "items": len(records),
        "means": means,
        "local": summarize([r["measures"] for r in answered]),
        "run": run,
    }


def write_report(out: Path, seed: int = 0) -> dict[str, Any]:
    report = build_report(out, seed)
    (out / REPORT).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", "utf-8")
    return report


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def print_report(report: dict[str, Any], out: TextIO, where: Path) -> None:
    print(f"kullm eval: {report['n']} judged, {report['failed']} failed, "
          f"{report['unjudged']} not judged yet, of {report['items']} answered -> {where}",
          file=out)
    used = report["run"].get("model_used")
    if used:
        print(f"model: {used['engine']}, {used['tokenizer']}", file=out)
    if report["means"]:
        print(f"{'criterion':<18}{'mean':>7}  95% CI", file=out)
        for name, m in report["means"].items():
            lo, hi = m["ci95"]
            print(f"{name:<18}{m['mean']:>7.3f}  [{lo:.3f}, {hi:.3f}]", file=out)
    for key, label in _LOCAL_LABELS.items():
        if key in report["local"]:
            print(f"{label:<32}{_num(report['local'][key]):>8}", file=out)


def _load_run(path: Path) -> dict[str, dict[str, Any]]:
    if not (path / ITEMS).exists():
        raise ConfigError(f"--compare: {path} holds no {ITEMS} (not a `kullm eval --out` folder)")
    return read_items(path)


def _settings_diff(a: Path, b: Path) -> list[str]:
    def flat(path: Path) -> dict[str, Any]:
        run = json.loads((path / RUN).read_text("utf-8")) if (path / RUN).exists() else {}
        return {f"{sec}.{k}": v for sec, values in run.get("settings", {}).items()
                for k, v in values.items()}

    fa, fb = flat(a), flat(b)
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(fa.keys() | fb.keys())
            if fa.get(k) != fb.get(k)]


def compare(a: Path, b: Path, seed: int = 0, top: int = 5) -> dict[str, Any]:
    """Per-criterion differences B - A over the items judged in both, with paired bootstrap
    95% intervals; the local measures side by side; the items whose scores moved most."""
    ra, rb = _load_run(a), _load_run(b)
    sa, sb = scored(ra), scored(rb)
    both = sorted(sa.keys() & sb.keys())
    diffs = {c: paired_difference([sa[i][c] for i in both], [sb[i][c] for i in both], seed=seed)
             for c in CRITERIA} if both else {}
    moved = sorted(both, key=lambda i: -sum(abs(sb[i][c] - sa[i][c]) for c in CRITERIA))
    changed = [
        {"id": i, "instruction": rb[i].get("instruction", ""),
         "change": round(sum(sb[i][c] - sa[i][c] for c in CRITERIA), 3),
         "a": sa[i], "b": sb[i]}
        for i in moved[:top] if any(sb[i][c] != sa[i][c] for c in CRITERIA)
    ]
    local_a = summarize([r["measures"] for r in ra.values() if r.get("measures")])
    local_b = summarize([r["measures"] for r in rb.values() if r.get("measures")])
    return {
        "a": str(a), "b": str(b), "paired": len(both),
        "means_a": {c: round(sum(sa[i][c] for i in both) / len(both), 4) for c in CRITERIA}
        if both else {},
        "differences": diffs, "local": {"a": local_a, "b": local_b},
        "changed_most": changed, "settings_changed": _settings_diff(a, b),
    }


def print_compare(cmp: dict[str, Any], out: TextIO) -> None:
    print(f"kullm eval --compare: B = {cmp['b']} vs A = {cmp['a']}, {cmp['paired']} items "
          "judged in both", file=out)
    for line in cmp["settings_changed"]:
        print(f"  setting {line}", file=out)
    if cmp["differences"]:
        print(f"{'criterion':<18}{'A':>7}{'B - A':>8}  95% CI (paired bootstrap)", file=out)
        for name, d in cmp["differences"].items():
            lo, hi = d["ci95"]
            print(f"{name:<18}{cmp['means_a'][name]:>7.3f}{d['mean']:>+8.3f}  "
                  f"[{lo:+.3f}, {hi:+.3f}]", file=out)
    la, lb = cmp["local"]["a"], cmp["local"]["b"]
    print(f"{'local measures':<32}{'A':>8}{'B':>8}", file=out)
    for key, label in _LOCAL_LABELS.items():
        if key in la or key in lb:
            print(f"{label:<32}{_num(la.get(key)):>8}{_num(lb.get(key)):>8}", file=out)
    if cmp["changed_most"]:
        print("changed most (sum of B - A over the five criteria):", file=out)
        for row in cmp["changed_most"]:
            text = " ".join(row["instruction"].split())[:60]
            print(f"  {row['change']:+5.1f}  {row['id']}  {text}", file=out)
