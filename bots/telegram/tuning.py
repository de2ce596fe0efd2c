"""Adapter timings that are not user settings: derived from `Settings` in production, chosen
by tests and the benchmark."""

from __future__ import annotations

from dataclasses import dataclass, field

from kullm_core.replies import DeliveryTuning
from kullm_core.settings import Settings


@dataclass(frozen=True)
class Tuning:
    poll_timeout_s: float = 10.0
    """Long-polling `getUpdates` timeout."""
    typing_every_s: float = 4.0
    """`typing…` lasts 5 s on screen; renew it a little earlier."""
    delivery: DeliveryTuning = field(default_factory=DeliveryTuning)
    """The reply lifecycle's timings (leases, placeholder, busy retries, grace...)."""

    @classmethod
    def from_settings(cls, s: Settings) -> Tuning:
        return cls(delivery=DeliveryTuning.from_settings(s))

    @property
    def shutdown_grace_s(self) -> float:
        return self.delivery.grace_s
