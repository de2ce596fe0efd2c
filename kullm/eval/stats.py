"""Means with 95% bootstrap confidence intervals, plain and paired (standard library only)."""

from __future__ import annotations

import random
from collections.abc import Sequence

RESAMPLES = 2000


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def bootstrap_ci(
    values: Sequence[float], *, seed: int = 0, resamples: int = RESAMPLES, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (a single value: that value twice)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    if n == 1 or min(values) == max(values):
        return float(values[0]), float(values[0])
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    lo = int((1 - level) / 2 * resamples)
    hi = min(resamples - 1, int((1 + level) / 2 * resamples))
    return means[lo], means[hi]


def summary(values: Sequence[float], *, seed: int = 0) -> dict[str, float | list[float]]:
    """`{"mean", "ci95": [lo, hi]}` rounded for the report."""
    lo, hi = bootstrap_ci(values, seed=seed)
    return {"mean": round(mean(values), 4), "ci95": [round(lo, 4), round(hi, 4)]}


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, seed: int = 0
) -> dict[str, float | list[float]]:
    """Mean of b - a over paired items with its paired-bootstrap 95% interval (items are
    resampled together, so what both runs share cancels out)."""
    if len(a) != len(b):
        raise ValueError("paired samples differ in length")
    return summary([y - x for x, y in zip(a, b, strict=True)], seed=seed)
