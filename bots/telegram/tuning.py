"""Adapter timings that are not user settings: derived from `Settings` in production, chosen
by tests and the benchmark."""

from __future__ import annotations

from dataclasses import dataclass

from kullm_core.settings import Settings


@dataclass(frozen=True)
class Tuning:
    poll_timeout_s: float = 10.0
    """Long-polling `getUpdates` timeout."""
    typing_every_s: float = 4.0
    """`typing…` lasts 5 s on screen; renew it a little earlier."""
    placeholder_delay_s: float = 2.0
    """Show "waiting in line" when no answer started this long after the question."""
    interim_tick_s: float = 0.2
    """How often streamed text is handed to the outbox (which merges and paces it)."""
    busy_retry_s: float = 5.0
    busy_give_up_s: float = 300.0
    """A full queue: submit again every `busy_retry_s`, for at most `busy_give_up_s`."""
    lease_s: float = 15.0
    renew_every_s: float = 2.0
    """A delivery's lease; a process that stops renewing loses its deliveries to others."""
    rescan_every_s: float = 5.0
    """How often to look for deliveries whose process died."""
    idle_timeout_s: float = 1200.0
    """Give up on a reply stream silent for this long."""
    shutdown_grace_s: float = 20.0
    """On stop, replies in progress get this long to finish; the rest are handed back."""

    @classmethod
    def from_settings(cls, s: Settings) -> Tuning:
        q = s.queue
        return cls(
            lease_s=q.reclaim_idle_s,
            renew_every_s=q.heartbeat_s,
            rescan_every_s=max(q.heartbeat_s, q.reclaim_idle_s / 3),
            idle_timeout_s=(q.job_timeout_s + q.reclaim_idle_s) * (q.max_attempts + 1) + 60,
            shutdown_grace_s=q.shutdown_grace_s,
        )
