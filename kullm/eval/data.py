"""The 252 Korean user-oriented instructions `kullm eval` answers (shipped in the package).

`kullm_core/data/user_oriented_instructions_ko.jsonl`: the DeepL Korean translation of the
self-instruct project's human-evaluation set, as published in the nlpai-lab/KULLM repository
(Apache-2.0), the set KULLM's authors evaluated KULLM3 on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

DATA_FILE = "data/user_oriented_instructions_ko.jsonl"


@dataclass(frozen=True)
class EvalItem:
    id: str
    instruction: str
    input: str

    @property
    def message(self) -> str:
        """What the user sends: the instruction, then a blank line and the input if any."""
        return f"{self.instruction}\n\n{self.input}" if self.input.strip() else self.instruction


def load_items(limit: int | None = None) -> list[EvalItem]:
    """The instructions in file order (the first `limit` of them)."""
    raw = resources.files("kullm_core").joinpath(DATA_FILE).read_text("utf-8")
    items = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        instances = row.get("instances") or [{}]
        items.append(EvalItem(str(row["id"]), str(row["instruction"]),
                              str(instances[0].get("input") or "")))
    return items[:limit] if limit is not None else items
