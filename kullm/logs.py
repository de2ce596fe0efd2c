"""Logging handlers, configured only here (entry points).

`text`: one readable line. `json` (python-json-logger): one object per line with `ts`
(UTC, milliseconds), `level`, `logger`, `message`, and `job_id` / `conversation` / `platform`
on every line that has them (`kullm_core.logctx`); tracebacks as `exc_info`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from kullm_core.logctx import FIELDS, ContextFilter

# Libraries that log at INFO what must not be in a log: slack_bolt's request verification
# logs the whole body of a request with a bad signature (the message text) at INFO; the
# HTTP clients log URLs holding the Telegram token, and tornado (PTB's webhook server) every
# request path, where a webhook path often holds a secret. They stay at WARNING whatever the
# level.
QUIET = ("httpx", "httpcore", "urllib3", "asyncio", "slack_bolt", "slack_sdk",
         "bots.slack.bolt", "bots.slack.sdk", "tornado.access")


def utc_ms(created: float) -> str:
    """`2026-12-01T09:18:13.123Z`."""
    whole = int(created)
    ms = int((created - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


class JsonFormatter(_JsonFormatter):
    """One JSON object per line; non-ASCII (Korean) kept readable."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        log_record["ts"] = utc_ms(record.created)
        super().add_fields(log_record, record, message_dict)


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <message> [job_id=... conversation=... platform=...]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_ms(record.created)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = " ".join(f"{k}={getattr(record, k)}" for k in FIELDS if hasattr(record, k))
        if not ctx:
            return line
        first, nl, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} [{ctx}]{nl}{rest}"


def quiet_progress_bars() -> None:
    """No tqdm bars from huggingface_hub/transformers (they would break JSON lines), and
    transformers' own stderr handler replaced by ours."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" not in sys.modules and importlib.util.find_spec("transformers") is None:
        return
    from transformers.utils import logging as tf_logging

    tf_logging.disable_progress_bar()
    tf_logging.disable_default_handler()
    tf_logging.enable_propagation()


def setup_logging(level: str = "INFO", fmt: str = "text", stream: IO[str] | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    if fmt == "json":
        quiet_progress_bars()
