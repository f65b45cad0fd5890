"""Bootstrap confidence intervals for aggregated metrics.

Every reported number gets a percentile bootstrap interval: resample the items
with replacement, re-run the metric's own aggregation, take the 2.5th and 97.5th
percentiles. Differences between two models (fine-tuned minus base) are
bootstrapped *paired*: the same resampled items for both, which is what makes a
small change on a small subset distinguishable from noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Aggregate = Callable[[Sequence[Any]], float]

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A value with its bootstrap interval (``low``/``high`` are None for n < 2)."""

    value: float
    low: float | None
    high: float | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci": [self.low, self.high], "n": self.n}


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap(
    items: Sequence[Any],
    aggregate: Aggregate,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """``aggregate(items)`` with a percentile bootstrap interval over the items."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(items)
    if n == 0:
        raise ValueError("cannot aggregate zero items")
    value = float(aggregate(items))
    if n < 2 or resamples < 1:
        return Estimate(value, None, None, n)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    samples = np.fromiter(
        (aggregate([items[i] for i in row]) for row in draws), dtype=float, count=resamples
    )
    lo, hi = _interval(samples, confidence)
    return Estimate(value, lo, hi, n)


def paired_bootstrap(
    items_a: Sequence[Any],
    items_b: Sequence[Any],
    change: Callable[[float, float], float],
    aggregate: Aggregate,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """``change(aggregate(a), aggregate(b))`` with a paired bootstrap interval.

    ``items_a[i]`` and ``items_b[i]`` must be the same item under two models; each
    resample draws the same items for both.
    """
    if len(items_a) != len(items_b):
        raise ValueError(
            f"paired bootstrap needs the same items: {len(items_a)} vs {len(items_b)}"
        )
    pairs = list(zip(items_a, items_b, strict=True))
    return bootstrap(
        pairs,
        lambda ps: change(aggregate([p[0] for p in ps]), aggregate([p[1] for p in ps])),
        resamples=resamples, confidence=confidence, seed=seed,
    )


def combine_mean(estimates: Sequence[Estimate]) -> Estimate:
    """Mean of independent estimates; the interval half-widths add in quadrature
    (a normal approximation, used for the single forgetting score)."""
    if not estimates:
        raise ValueError("nothing to combine")
    k = len(estimates)
    value = sum(e.value for e in estimates) / k
    n = sum(e.n for e in estimates)
    if any(e.low is None or e.high is None for e in estimates):
        return Estimate(value, None, None, n)
    half = (sum(((e.high - e.low) / 2) ** 2 for e in estimates) ** 0.5) / k  # type: ignore[operator]
    return Estimate(value, value - half, value + half, n)
