"""What the deployment files tell kullm: every variable they set is a real setting and takes
effect, the Grafana dashboard queries only metrics the code exports, and every probe command
or path they name exists."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from pydantic import SecretStr

from kullm_core.settings import Settings, load_settings
from tests.deploy import helpers as h

PLATFORM_VARS = {
    "TELEGRAM_BOT_TOKEN": "telegram.token",
    "SLACK_BOT_TOKEN": "slack.bot_token",
    "SLACK_APP_TOKEN": "slack.app_token",
    "SLACK_SIGNING_SECRET": "slack.signing_secret",
}
DEPLOYMENT_VARS = {
    "TELEGRAM_BOT_TOKEN", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET",
    "KULLM_REDIS__URL", "KULLM_MODEL__ENGINE", "KULLM_MODEL__PATH",
    "KULLM_MODEL__OPENAI_BASE_URL", "KULLM_MODEL__OPENAI_API_KEY", "KULLM_OPS__HOST",
    "KULLM_OPS__PORT", "KULLM_LOG_FORMAT", "KULLM_LOG_LEVEL", "KULLM_LIMITS__ALLOWED_USERS",
    "KULLM_LIMITS__ADMINS", "KULLM_TELEGRAM__MODE", "KULLM_TELEGRAM__WEBHOOK_URL",
    "KULLM_TELEGRAM__WEBHOOK_SECRET",
}
METRICS = {
    "kullm_jobs_total", "kullm_generated_tokens_total", "kullm_prompt_tokens_total",
    "kullm_first_token_seconds", "kullm_token_seconds", "kullm_inflight_jobs",
    "kullm_batch_slots", "kullm_batch_slots_used", "kullm_queue_depth", "kullm_dead_letters",
    "kullm_adapter_messages_received_total", "kullm_adapter_replies_delivered_total",
    "kullm_adapter_platform_calls_total", "kullm_adapter_platform_429_total",
    "kullm_adapter_first_text_seconds", "kullm_adapter_edits_per_reply",
    "kullm_helpdesk_ratings_total", "kullm_helpdesk_escalations_total",
    "kullm_helpdesk_resolved_total",
}
HISTOGRAMS = {"kullm_first_token_seconds", "kullm_token_seconds",
              "kullm_adapter_first_text_seconds", "kullm_adapter_edits_per_reply"}
DASHBOARD = h.ROOT / "deploy" / "grafana" / "kullm-dashboard.json"


# -- .env.example and the variables every deployment file sets -------------------------------


def _setting_path(var: str) -> str:
    if var in PLATFORM_VARS:
        return PLATFORM_VARS[var]
    assert var.startswith("KULLM_"), f"{var} is no kullm setting"
    return var.removeprefix("KULLM_").lower().replace("__", ".")


def _value(settings: Settings, dotted: str) -> Any:
    obj: Any = settings
    for part in dotted.split("."):
        assert hasattr(obj, part), f"no setting `{dotted}`"
        obj = getattr(obj, part)
    return obj


def _expect(current: Any, raw: str) -> Any:
    """What `raw`, set in the environment, should have made of a setting like `current`."""
    if isinstance(current, SecretStr):
        return raw
    if isinstance(current, list):
        return [v.strip() for v in raw.split(",")]
    if isinstance(current, bool):
        return raw.lower() == "true"
    if isinstance(current, Path):
        return Path(raw).resolve()
    if isinstance(current, int | float):
        return type(current)(raw)
    return raw


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _example_env() -> dict[str, str]:
    """.env.example with every example set; an empty token gets a stand-in value."""
    return {k: v or f"test-{k.lower()}" for k, v in h.env_example().items()
            if k not in h.COMPOSE_ONLY_VARS}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import os

    for var in list(os.environ):
        if var.startswith("KULLM_") or var in PLATFORM_VARS:
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    return tmp_path


def _assert_took_effect(settings: Settings, env: dict[str, str], where: str = "") -> None:
    defaults = Settings.model_construct()
    for var, raw in env.items():
        path = _setting_path(var)
        got = _plain(_value(settings, path))
        assert got == _plain(_expect(_value(defaults, path), raw)), f"{where} {var}"


def test_env_example_lists_every_variable_a_deployment_sets() -> None:
    assert set(h.env_example()) >= DEPLOYMENT_VARS
    assert h.env_example()["COMPOSE_PROFILES"] == "cpu"


def test_every_env_example_variable_takes_effect(clean_env: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    env = _example_env()
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    _assert_took_effect(load_settings(), env)


def test_env_example_works_as_the_dotenv_file(clean_env: Path) -> None:
    env = _example_env()
    lines = [f"{k}={v}" for k, v in env.items()] + ["COMPOSE_PROFILES=cpu,telegram"]
    (clean_env / ".env").write_text("\n".join(lines) + "\n")
    _assert_took_effect(load_settings(), env)


def _manifest_env() -> list[tuple[str, str, str]]:
    """(where, name, literal value or "") of every variable compose, k8s and systemd set."""
    out = []
    for name, svc in h.kullm_services(h.compose()).items():
        out += [(f"compose:{name}", k, h.interpolate(str(v)))
                for k, v in svc["environment"].items()]
    for name, spec in h.pod_specs():
        for c in spec["containers"]:
            out += [(f"k8s:{name}", e["name"], e.get("value", "")) for e in c.get("env", [])]
    out += [(f"k8s:Secret/{k}", k, "") for k in h.k8s_doc("Secret", "kullm-secrets")
            ["stringData"]]
    for path in h.UNITS:
        out += [(path.name, k, v) for k, v in h.unit_env(h.unit(path)).items()]
    return out


NOT_KULLM = {"HF_HOME"}
"""Read by huggingface_hub (where the model cache is), not by kullm."""


def test_every_variable_the_manifests_set_is_a_real_setting(clean_env: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    found = [(w, k, v) for w, k, v in _manifest_env() if k not in NOT_KULLM]
    assert len({k for _, k, _ in found}) >= 10
    defaults = Settings.model_construct()
    for where, var, value in found:
        _value(defaults, _setting_path(var))  # names a real setting
        if value:  # a literal value: it takes effect (secrets come from the Secret)
            monkeypatch.setenv(var, value)
            _assert_took_effect(load_settings(), {var: value}, where)
            monkeypatch.delenv(var)


def test_k8s_configmap_settings_load_as_the_pods_see_them(clean_env: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    cfg = clean_env / "kullm.toml"
    cfg.write_text(h.configmap_toml())
    monkeypatch.setenv("KULLM_OPS__HOST", "0.0.0.0")
    monkeypatch.setenv("KULLM_OPS__PORT", "9100")
    s = load_settings(cfg)
    assert s.data_dir == Path("/app/data") and s.redis.url == "redis://kullm-valkey:6379/0"
    assert (s.ops.host, s.ops.port, s.model.tiny_fallback) == ("0.0.0.0", 9100, "never")


# -- Grafana ---------------------------------------------------------------------------------


def _targets(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in dash["panels"] for t in p.get("targets", [])]


def _selectors(node: Any) -> list[str]:
    if type(node).__name__ == "VectorSelector":
        return [node.name]
    found = []
    for attr in ("args", "expr", "lhs", "rhs", "param", "vector_selector"):
        child = getattr(node, attr, None)
        for c in child if isinstance(child, list) else [child]:
            if c is not None:
                found += _selectors(c)
    return found


def _base(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name) if name.endswith(
        ("_bucket", "_sum", "_count")) else name


def test_dashboard_queries_only_the_exported_metrics_and_all_of_them() -> None:
    dash = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for t in _targets(dash):
        expr = t["expr"].replace("$__rate_interval", "5m").replace("$platform", ".*")
        names = _selectors(promql_parser.parse(expr))  # raises on invalid PromQL
        assert names, t["expr"]
        used |= {_base(n) for n in names}
    assert used == METRICS


def test_dashboard_has_a_datasource_variable_and_p50_p95_of_every_histogram() -> None:
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
    exprs = [t["expr"] for t in _targets(dash)]
    for metric in HISTOGRAMS:
        for q in ("0.5", "0.95"):
            assert any(e.startswith(f"histogram_quantile({q},") and f"{metric}_bucket" in e
                       for e in exprs), (metric, q)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_dashboard_metrics_are_the_ones_the_code_registers() -> None:
    from prometheus_client import REGISTRY

    import kullm_core.metrics  # noqa: F401  (registers them)

    registered = {f.name + ("_total" if f.type == "counter" else "") for f in REGISTRY.collect()}
    assert registered >= METRICS


# -- probe commands and paths ----------------------------------------------------------------


def _probe_commands() -> set[tuple[str, ...]]:
    """Every `kullm ...` command a healthcheck, probe or unit runs (without --config X)."""
    cmds: list[list[str]] = []
    for svc in h.compose()["services"].values():
        test = svc.get("healthcheck", {}).get("test", [])
        if test[1:2] == ["kullm"]:
            cmds.append(test[1:])
    health = next(a for i, a in h.dockerfile_instructions() if i == "HEALTHCHECK")
    cmds.append(json.loads(health.split(" CMD ", 1)[1]))
    for _, spec in h.pod_specs():
        for c in spec["containers"]:
            cmds.append(c.get("command", []))
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                cmds.append(c.get(probe, {}).get("exec", {}).get("command", []))
    for path in h.UNITS:
        u = h.unit(path)
        for line in u["Service.ExecStart"] + u.get("Service.ExecStartPost", []):
            cmds += [shlex.split(m) for m in re.findall(r"\S*/kullm [^;&|']+", line)]
    out = set()
    for cmd in cmds:
        if cmd and Path(cmd[0]).name == "kullm":
            args = [a for i, a in enumerate(cmd[1:]) if a != "--config" and
                    (i == 0 or cmd[i] != "--config") and not a.startswith(">")]
            out.add(tuple(args))
    return out


def _help(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "kullm.cli", *args, "--help"],
                         capture_output=True, text=True, timeout=60, cwd=h.ROOT)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_probe_commands_named_in_the_manifests_exist() -> None:
    cmds = _probe_commands()
    assert ("worker", "--check") in cmds and ("telegram", "--check") in cmds
    top = _help()
    for cmd in sorted(cmds):
        sub, flags = cmd[0], cmd[1:]
        assert re.search(rf"^\s+{sub}\s", top, flags=re.M), cmd
        page = _help(sub)
        for flag in flags:
            assert re.search(rf"\s{re.escape(flag)}\b", page), cmd


def _http_probe_paths() -> set[str]:
    paths = set()
    for _, spec in h.pod_specs():
        for c in spec["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if "httpGet" in c.get(probe, {}):
                    paths.add(c[probe]["httpGet"]["path"])
    text = json.dumps(h.compose()) + "".join(p.read_text() for p in h.UNITS)
    paths |= set(re.findall(r"http://127\.0\.0\.1:9100(/[a-z]+)", text))
    sm = h.k8s_doc("ServiceMonitor", "kullm-chat")
    paths |= {e["path"] for e in sm["spec"]["endpoints"]}
    return paths


async def _get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    status = (await reader.readline()).decode()
    writer.close()
    await writer.wait_closed()
    return status.split(" ", 2)[1]


async def test_probe_paths_are_served_by_the_ops_endpoint() -> None:
    from kullm_core.ops import OpsServer, Readiness
    from kullm_core.settings import OpsSettings

    paths = _http_probe_paths()
    assert paths == {"/healthz", "/readyz", "/metrics"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with OpsServer(OpsSettings(host="127.0.0.1", port=port), readiness=Readiness()):
        answers = {p: await _get(port, p) for p in sorted(paths)}
    assert answers == {p: "200" for p in paths}


def _http_probe_commands() -> list[list[str]]:
    """The compose healthchecks that probe over HTTP (python, the images have no curl)."""
    return [svc["healthcheck"]["test"][1:] for svc in h.kullm_services(h.compose()).values()
            if "urllib" in json.dumps(svc.get("healthcheck", {}))]


async def test_http_healthcheck_command_fails_while_not_ready() -> None:
    from kullm_core.ops import OpsServer, Readiness
    from kullm_core.settings import OpsSettings

    cmds = _http_probe_commands()
    assert cmds
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready = asyncio.Event()

    async def check() -> object:
        return True if ready.is_set() else "starting"

    readiness = Readiness()
    readiness.add("slack", check)
    async with OpsServer(OpsSettings(host="127.0.0.1", port=port), readiness=readiness):
        for cmd in cmds:
            argv = [sys.executable if cmd[0] == "python" else cmd[0],
                    *(a.replace(":9100/", f":{port}/") for a in cmd[1:])]
            starting = await asyncio.create_subprocess_exec(
                *argv, stderr=asyncio.subprocess.DEVNULL)
            assert await starting.wait() == 1, cmd  # 503 from /readyz: unhealthy
            ready.set()
            up = await asyncio.create_subprocess_exec(*argv)
            assert await up.wait() == 0, cmd
            ready.clear()
