"""Timings of the reply lifecycle: derived from `Settings` in production, chosen by tests."""

from __future__ import annotations

from dataclasses import dataclass

from kullm_core.settings import Settings


@dataclass(frozen=True)
class DeliveryTuning:
    lease_s: float = 15.0
    renew_every_s: float = 2.0
    """A reply's lease; a process that stops renewing loses its replies to others."""
    rescan_every_s: float = 5.0
    """How often to look for replies whose process died or handed them back."""
    tick_s: float = 0.2
    """At most one `progress` per reply per tick (the sink merges and paces the rest)."""
    placeholder_delay_s: float = 2.0
    """Show "waiting in line" when no answer started this long after the question."""
    busy_retry_s: float = 5.0
    busy_give_up_s: float = 300.0
    """A full queue: the user sees their place; submit again every `busy_retry_s`, for at
    most `busy_give_up_s`, then say the bot is busy (one policy for every platform)."""
    state_check_s: float = 30.0
    """A silent reply stream: look at the job's state this often (an expired stream means
    the answer is in the history)."""
    idle_timeout_s: float = 1200.0
    """Give up on a reply stream silent for this long while its job still lives."""
    grace_s: float = 20.0
    """On stop, replies in progress get this long to finish; the rest are handed back."""
    redis_retry_max_s: float = 5.0
    """Longest pause between two tries of a Redis call that failed."""
    refusal_interval_s: float = 10.0
    """At most one refusal per chat in this long (`limits.refusal_interval_s`)."""

    @classmethod
    def from_settings(cls, s: Settings, *, grace_s: float | None = None) -> DeliveryTuning:
        q = s.queue
        return cls(
            lease_s=q.reclaim_idle_s,
            renew_every_s=q.heartbeat_s,
            rescan_every_s=max(q.heartbeat_s, q.reclaim_idle_s / 3),
            state_check_s=max(5.0, min(30.0, q.reclaim_idle_s * 2)),
            idle_timeout_s=(q.job_timeout_s + q.reclaim_idle_s) * (q.max_attempts + 1) + 60,
            grace_s=q.shutdown_grace_s if grace_s is None else grace_s,
            refusal_interval_s=s.limits.refusal_interval_s,
        )
