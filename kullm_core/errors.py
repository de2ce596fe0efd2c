"""Error types. `UserFacingError` text is shown in chat; everything else is logged."""

from __future__ import annotations


class KullmError(Exception):
    """Base of this project's errors."""


class ConfigError(KullmError):
    """A bad setting, found at start. The message names the setting."""


class UserFacingError(KullmError):
    """An error whose `kind` maps to a localized message shown to the user."""

    def __init__(self, kind: str, detail: str = "", **params: int | str) -> None:
        super().__init__(detail or kind)
        self.kind = kind
        self.params = params


class EvictionPolicyError(KullmError):
    """The Redis server would evict keys (history, queue) under memory pressure."""


class EmbeddedRedisError(KullmError):
    """The embedded server could not start (binary missing, newer data format, ...)."""


class EmbeddedRedisBusy(EmbeddedRedisError):
    """Another process already runs the embedded server of this data dir."""


class ModelLoadError(KullmError):
    """The model could not be found or loaded."""


class RedisUnavailable(KullmError):
    """Redis cannot be reached (at start, or lost for good by a command that cannot wait)."""


class PlatformError(KullmError):
    """A chat platform rejected our credentials or cannot be reached (one line for the user).
    `unreachable`: a network problem, worth another try; else a refusal, final."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable
