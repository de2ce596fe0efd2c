"""The longest chain of intra-package imports in the Telegram adapter, from `bots.telegram.app`.

Counts levels as modules on the chain (app alone is 1). Only imports between modules of
`bots/telegram` count: `kullm_core` is a dependency, not part of the adapter's column.

    python bench/telegram_import_depth.py [package_dir] [entry_module]
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path


def imports(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith(package + "."))
    return out


def longest_chain(root: Path, package: str, entry: str) -> list[str]:
    modules = {f"{package}.{p.stem}": p for p in root.glob("*.py") if p.stem != "__init__"}

    @cache
    def chain(module: str) -> tuple[str, ...]:
        deps = [m for m in imports(modules[module], package) if m in modules and m != module]
        best = max((chain(d) for d in deps), key=len, default=())
        return (module, *best)

    return list(chain(entry))


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "bots/telegram")
    package = ".".join(root.parts)
    entry = sys.argv[2] if len(sys.argv) > 2 else f"{package}.app"
    path = longest_chain(root, package, entry)
    print(f"{len(path)} levels: " + " -> ".join(m.rsplit(".", 1)[-1] for m in path))


if __name__ == "__main__":
    main()
