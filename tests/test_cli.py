"""The errors a person meets at the command line: one clear line and a status, never a
traceback; and the command line itself (`--version`, `--config` anywhere, help pages)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kullm_core.settings import Settings
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import TOKEN, FakeTelegram

pytestmark = pytest.mark.slow


def _env(settings: Settings | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KULLM_", "TELEGRAM_", "SLACK_"))}
    env["PTB_TIMEDELTA"] = "1"
    if settings is not None:
        env.update({"KULLM_REDIS__URL": settings.redis.url,
                    "KULLM_DATA_DIR": str(settings.data_dir),
                    "KULLM_MODEL__PATH": settings.model.path})
    env.update(extra)
    return env


async def _kullm(env: dict[str, str], *args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kullm.cli", *args, env=env, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_line_error(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    [line] = [ln for ln in err.splitlines() if ln.startswith("kullm: error:")]
    assert expected in line, err


async def test_telegram_token_rejected_is_one_line(settings: Settings) -> None:
    async with FakeTelegram() as tg:
        env = _env(settings, TELEGRAM_BOT_TOKEN="123456:WRONG",
                   KULLM_TELEGRAM__BASE_URL=tg.base_url)
        code, _, err = await _kullm(env, "telegram")
    _one_line_error(code, err, "telegram: the Bot API rejected the token (TELEGRAM_BOT_TOKEN)")


async def test_telegram_unreachable_is_one_line(settings: Settings) -> None:
    env = _env(settings, TELEGRAM_BOT_TOKEN=TOKEN,
               KULLM_TELEGRAM__BASE_URL=f"http://127.0.0.1:{_closed_port()}/bot")
    code, _, err = await _kullm(env, "telegram")
    _one_line_error(code, err, "telegram: cannot reach the Bot API")


async def test_slack_token_rejected_is_one_line(settings: Settings) -> None:
    async with FakeSlack(mode="socket") as fake:
        env = _env(settings, SLACK_BOT_TOKEN="xoxb-wrong", SLACK_APP_TOKEN="xapp-wrong",
                   KULLM_SLACK__BASE_URL=fake.api_url)
        code, _, err = await _kullm(env, "slack")
    _one_line_error(code, err, "refused by Slack")


async def test_half_configured_slack_names_what_is_missing(settings: Settings) -> None:
    env = _env(settings, SLACK_BOT_TOKEN="xoxb-1")
    code, _, err = await _kullm(env, "serve")
    _one_line_error(code, err, "Slack is half configured: missing SLACK_APP_TOKEN")


async def test_redis_unreachable_for_chat_is_one_line(settings: Settings) -> None:
    env = _env(settings, KULLM_REDIS__URL=f"redis://127.0.0.1:{_closed_port()}/0")
    code, _, err = await _kullm(env, "chat", "--once", "안녕")
    _one_line_error(code, err, "cannot reach Redis at redis://127.0.0.1:")


async def test_version_config_after_the_subcommand_and_help(
    settings: Settings, tmp_path: Path
) -> None:
    code, out, _ = await _kullm(_env(None), "--version")
    assert code == 0 and out.startswith("kullm-chat ")
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[generation]\ntemperature = 9\n")
    code, _, err = await _kullm(_env(settings), "worker", "--check", "--config", str(cfg))
    _one_line_error(code, err, "setting `generation.temperature`")
    code, out, _ = await _kullm(_env(None), "chat", "--help")
    assert code == 0 and "--once TEXT" in out and "print one reply" in out
    code, out, _ = await _kullm(_env(None), "worker", "--help")
    assert "probe only" in out


async def test_a_dotenv_in_the_working_directory_is_read(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(f"# this deployment\nKULLM_REDIS__URL={settings.redis.url}\n")
    code, out, err = await _kullm(_env(None), "worker", "--check", cwd=tmp_path)
    assert code == 1 and "0 healthy worker" in out, err  # it found Redis through .env


async def test_an_evicting_redis_is_refused_before_the_model_loads(settings: Settings) -> None:
    from redis.asyncio import Redis

    r = Redis.from_url(settings.redis.url)
    await r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        code, _, err = await _kullm(_env(settings), "worker")
    finally:
        await r.config_set("maxmemory-policy", "noeviction")
        await r.aclose()
    _one_line_error(code, err, "maxmemory-policy is `allkeys-lru`")
    assert "loading model" not in err
