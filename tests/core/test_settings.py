"""Settings: TOML + environment, and bad config failing at start naming the setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kullm_core.errors import ConfigError
from kullm_core.settings import kullm3_system_prompt, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_carry_kullm3_exact_system_prompt() -> None:
    s = load_settings()
    assert s.generation.system_prompt == kullm3_system_prompt()
    first_line = "당신은 고려대학교 NLP&AI 연구실에서 만든 AI 챗봇입니다.\n"
    assert s.generation.system_prompt.startswith(first_line)
    assert not s.generation.system_prompt.endswith("\n")
    assert s.model.path == "nlpai-lab/KULLM3" and s.redis.url == ""


def test_documented_default_config_file_loads() -> None:
    s = load_settings(ROOT / "config" / "kullm.toml")
    assert s.generation.context_window == 4096


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "k.toml"
    cfg.write_text("[generation]\ntemperature = 0.2\nmax_new_tokens = 100\n")
    monkeypatch.setenv("KULLM_GENERATION__TEMPERATURE", "0.9")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:abc")
    s = load_settings(cfg)
    assert (s.generation.temperature, s.generation.max_new_tokens) == (0.9, 100)
    assert s.telegram.token.get_secret_value() == "123:abc"


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[generation]\ntemperature = 5\n", "generation.temperature"),
        ("[generation]\nmax_new_tokens = 5000\n", "generation.max_new_tokens"),
        ("[queue]\nmax_pendingg = 3\n", "queue.max_pendingg"),
        ("[model]\ndevice = 'gpu'\n", "model.device"),
    ],
)
def test_bad_setting_is_named(tmp_path: Path, toml: str, named: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert named in str(err.value)


def test_cli_fails_at_start_with_one_clear_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[batching]\nmax_batch_size = -1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "kullm.cli", "--config", str(cfg), "worker"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "kullm: error: setting `batching.max_batch_size`: "
        "Input should be greater than or equal to 0"
    ]


def test_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path),
           "KULLM_MODEL__PATH": "no-such-org/no-such-model", "KULLM_MODEL__TINY_FALLBACK": "never",
           "KULLM_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "kullm.cli", "worker"], env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("kullm: error: model `no-such-org/no-such-model` not found locally")
    assert "Traceback" not in proc.stderr


def test_relative_paths_resolve_once_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "kullm3").mkdir(parents=True)
    monkeypatch.setenv("KULLM_MODEL__PATH", "models/kullm3")
    s = load_settings()
    assert s.data_dir == tmp_path / "data"  # the default "data", made absolute at load
    assert s.model.path == str(tmp_path / "models" / "kullm3")
    monkeypatch.setenv("KULLM_MODEL__PATH", "nlpai-lab/KULLM3")
    assert load_settings().model.path == "nlpai-lab/KULLM3"  # a hub id stays one


def test_dotenv_lists_and_log_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "# tokens and settings of this deployment\nTELEGRAM_BOT_TOKEN=123:from-dotenv\n"
        "KULLM_LOG_LEVEL=debug\nKULLM_LIMITS__ADMINS=tg:1, tg:2\n"
    )
    monkeypatch.setenv("KULLM_GENERATION__STOP_STRINGS", '["###", "END"]')
    s = load_settings()
    assert s.telegram.token.get_secret_value() == "123:from-dotenv"
    assert s.log_level == "DEBUG"
    assert s.limits.admins == ["tg:1", "tg:2"]  # `a,b` as well as JSON
    assert s.generation.stop_strings == ["###", "END"]
    monkeypatch.setenv("KULLM_LOG_LEVEL", "warning")  # the environment wins over .env
    assert load_settings().log_level == "WARNING"
    (tmp_path / ".env").write_text("KULLM_LOG_LEVL=debug\n")  # a typo is named, not ignored
    with pytest.raises(ConfigError, match="log_levl"):
        load_settings()
