"""Confidence intervals for aggregated metrics, and paired differences between models.

A continuous measure gets a percentile bootstrap interval: resample the items
with replacement, re-run the metric's own aggregation, take the 2.5th and 97.5th
percentiles. A proportion of 0/1 items (an accuracy) gets an exact
(Clopper–Pearson) interval instead, and a paired difference of proportions
Newcombe's interval with an exact McNemar test. Differences between two models
(fine-tuned minus base, or arm minus arm) are *paired*: the same resampled items
for both, which is what makes a small change on a small subset distinguishable
from noise; over several training seeds, a hierarchical bootstrap (seeds, then
items).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
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


# ----------------------------------------------------------------------------- proportions
#
# Accuracies are proportions: their intervals are exact (Clopper–Pearson) or score
# (Wilson) intervals, which stay honest at 0/n and n/n where a percentile bootstrap
# collapses to [0, 0]. Pure Python: the binomial tail is summed in log space.

DEFAULT_POWER = 0.80


def _z(confidence: float) -> float:
    """Two-sided normal quantile: 1.96 for 0.95."""
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _check(k: int, n: int, confidence: float) -> None:
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"proportion needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp
             + (n - i) * lq for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def _solve(f: Callable[[float], float], target: float,
           lo: float = 0.0, hi: float = 1.0) -> tuple[float, float]:
    """A bracket [a, b] (width ~1e-30 of [lo, hi]) where f crosses ``target``, for f
    decreasing in its argument (bisection): f(a) > target >= f(b)."""
    for _ in range(100):
        mid = (lo + hi) / 2
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return lo, hi


def clopper_pearson(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval of k successes in n: 0/16 -> [0, 0.206]."""
    _check(k, n, confidence)
    alpha = 1.0 - confidence
    # low: P(X >= k | p) = alpha/2, i.e. P(X <= k-1 | p) = 1 - alpha/2 (falls with p);
    # high: P(X <= k | p) = alpha/2.
    low = 0.0 if k == 0 else sum(_solve(lambda p: binom_cdf(k - 1, n, p), 1 - alpha / 2)) / 2
    high = 1.0 if k == n else sum(_solve(lambda p: binom_cdf(k, n, p), alpha / 2)) / 2
    return low, high


def wilson(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of k successes in n."""
    _check(k, n, confidence)
    z, p = _z(confidence), k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE,
               method: str = "clopper-pearson") -> Estimate:
    """k/n with its exact (default) or Wilson interval."""
    if method not in ("clopper-pearson", "wilson"):
        raise ValueError(f"method: 'clopper-pearson' or 'wilson', got {method!r}")
    lo, hi = (clopper_pearson if method == "clopper-pearson" else wilson)(k, n, confidence)
    return Estimate(k / n, lo, hi, n)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs ``b`` (only A right) and
    ``c`` (only B right) as a binomial test of b ~ Binomial(b + c, 1/2)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return min(1.0, 2.0 * binom_cdf(min(b, c), b + c, 0.5))


def newcombe_paired(a: int, b: int, c: int, d: int,
                    confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float, float]:
    """Difference p_A - p_B of paired proportions with Newcombe's (1998) hybrid score
    interval (method 10: Wilson intervals of each margin, combined with the phi
    correlation). Cells: a both right, b only A right, c only B right, d neither."""
    n = a + b + c + d
    if n < 1 or min(a, b, c, d) < 0:
        raise ValueError(f"paired counts must be >= 0 with n >= 1, got {(a, b, c, d)}")
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, confidence)
    l2, u2 = wilson(a + c, n, confidence)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(denom) if denom else 0.0
    diff = p1 - p2
    dl = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    du = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return diff, max(-1.0, diff - dl), min(1.0, diff + du)


# ----------------------------------------------------------------------------- power


def mde_from_se(se: float, confidence: float = DEFAULT_CONFIDENCE,
                power: float = DEFAULT_POWER) -> float:
    """Smallest true difference a two-sided test at 1 - confidence detects with
    ``power``, given the standard error of the estimated difference."""
    return (_z(confidence) + NormalDist().inv_cdf(power)) * se


def mde_mcnemar(n: int, discordant: float, confidence: float = DEFAULT_CONFIDENCE,
                power: float = DEFAULT_POWER) -> float:
    """Smallest difference of paired proportions McNemar's test detects at ``n`` pairs
    with discordant rate ``discordant`` (Connor 1987: n = (z_a sqrt(psi) +
    z_b sqrt(psi - delta^2))^2 / delta^2, solved for delta). A difference delta needs
    at least delta discordant pairs, so psi is taken as max(observed rate, delta): a
    low observed rate (or none) does not promise that tiny differences are detectable.
    1.0 when no difference is detectable at this n."""
    if n < 1 or not 0.0 <= discordant <= 1.0:
        raise ValueError(f"mde_mcnemar needs n >= 1 and 0 <= discordant <= 1, "
                         f"got n={n}, discordant={discordant}")
    za, zb = _z(confidence), NormalDist().inv_cdf(power)

    def needed(delta: float) -> float:  # pairs needed to detect delta: falls with delta
        psi = max(discordant, delta)
        return (za * math.sqrt(psi) + zb * math.sqrt(max(0.0, psi - delta ** 2))) ** 2 / delta ** 2

    if needed(1.0) > n:
        return 1.0
    return _solve(needed, n, lo=1e-9)[1]  # the side that is detectable


# ----------------------------------------------------------------------------- hierarchy

Group = Mapping[str, Sequence[Any]]  # one seed's items, by stratum


def hierarchical_bootstrap(
    groups: Sequence[Group],
    statistic: Callable[[Group], float],
    *,
    crossed: bool = False,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float | None, float | None, float | None]:
    """Mean over seeds of ``statistic(group)``, with a two-level percentile bootstrap:
    resample the seeds (``groups``), then the items within each stratum of each drawn
    seed. ``crossed``: the seeds hold the same items in the same order (one test set
    scored by every seed's model), so one item draw is shared by all seeds, which keeps
    the items' own variance in the interval instead of averaging it away.
    Returns (value, low, high, standard error); the interval is None when nothing can
    be resampled (one seed of single items)."""
    if not groups:
        raise ValueError("hierarchical bootstrap of no groups")
    value = math.fsum(statistic(g) for g in groups) / len(groups)
    k = len(groups)
    if resamples < 1 or (k < 2 and all(len(v) < 2 for v in groups[0].values())):
        return value, None, None, None
    if crossed:
        shapes = {tuple((s, len(v)) for s, v in sorted(g.items())) for g in groups}
        if len(shapes) != 1:
            raise ValueError("crossed bootstrap needs the same strata and sizes in every seed")
    rng = np.random.default_rng(seed)
    samples = np.empty(resamples)
    for r in range(resamples):
        seeds = rng.integers(0, k, size=k) if k > 1 else np.zeros(1, dtype=int)
        shared = ({s: rng.integers(0, len(v), size=len(v)) for s, v in groups[0].items()}
                  if crossed else None)
        total = 0.0
        for j in seeds:
            g = groups[j]
            draw = shared or {s: rng.integers(0, len(v), size=len(v)) for s, v in g.items()}
            total += statistic({s: [v[i] for i in draw[s]] for s, v in g.items()})
        samples[r] = total / k
    lo, hi = _interval(samples, confidence)
    finite = samples[np.isfinite(samples)]
    se = float(np.std(finite, ddof=1)) if finite.size > 1 else None
    return value, lo, hi, se


@dataclass(frozen=True)
class Difference:
    """A paired difference A - B with its interval, how it was computed, and the
    smallest difference the data could have detected (80% power, two-sided)."""

    value: float
    low: float | None
    high: float | None
    n: int  # items per seed (pairs)
    seeds: int
    method: str
    mde: float | None = None
    p_value: float | None = None  # exact McNemar (proportions, one seed)
    discordant: tuple[int, int] | None = None  # (only A right, only B right), over seeds
    per_seed: tuple[dict[str, Any], ...] = ()

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (
            self.low > 0 or self.high < 0)

    def scaled(self, factor: float) -> Difference:
        """The same difference in other units (e.g. x100 for points)."""
        def s(x: float | None) -> float | None:
            return None if x is None else x * factor
        lo, hi = s(self.low), s(self.high)
        if factor < 0:
            lo, hi = hi, lo
        mde = None if self.mde is None else self.mde * abs(factor)
        return dataclasses.replace(self, value=self.value * factor, low=lo, high=hi, mde=mde)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "ci": [self.low, self.high], "n": self.n,
                               "seeds": self.seeds, "method": self.method, "mde": self.mde}
        if self.p_value is not None:
            out["p_value"] = self.p_value
        if self.discordant is not None:
            out["discordant"] = list(self.discordant)
        if self.per_seed:
            out["per_seed"] = list(self.per_seed)
        return out


BOOTSTRAP_ITEMS = "paired bootstrap over items (one seed: item variance only)"
# A percentile bootstrap over fewer items than this covers far less than its nominal
# 95% (4 items have at most 35 distinct resamples), so no interval is given and no
# claim made from it; nor is a detectable effect computed from a spread of zero.
MIN_BOOTSTRAP_ITEMS = 10
TOO_FEW_ITEMS = f"too few items for a bootstrap interval (fewer than {MIN_BOOTSTRAP_ITEMS})"
BOOTSTRAP_SEEDS = "hierarchical bootstrap (seeds, then items)"
NEWCOMBE = "Newcombe hybrid score interval, exact McNemar test (one seed: item variance only)"


def _check_pairs(groups: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> None:
    if not groups:
        raise ValueError("a paired difference needs at least one seed")
    for i, (a, b) in enumerate(groups):
        if len(a) != len(b) or not a:
            raise ValueError(f"seed {i}: paired items must match and be non-empty "
                             f"({len(a)} vs {len(b)})")


def paired_proportions(
    groups: Sequence[tuple[Sequence[float], Sequence[float]]],
    *,
    crossed: bool = False,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Difference:
    """p_A - p_B of 0/1 scores of the same items, one (a, b) pair of lists per seed.

    One seed: Newcombe's interval, exact McNemar p, detectable effect from the
    discordant rate. Several: the mean over seeds with a hierarchical bootstrap
    interval (detectable effect from its standard error), and each seed's McNemar test.
    """
    _check_pairs(groups)
    per_seed = []
    tb = tc = 0
    for a, b in groups:
        if any(x not in (0, 1) for x in (*a, *b)):
            raise ValueError("paired proportions need 0/1 scores")
        both = sum(1 for x, y in zip(a, b, strict=True) if x and y)
        only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
        only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
        diff, lo, hi = newcombe_paired(both, only_a, only_b, len(a) - both - only_a - only_b,
                                       confidence)
        per_seed.append({"value": diff, "ci": [lo, hi], "n": len(a),
                         "discordant": [only_a, only_b],
                         "p_value": mcnemar_exact(only_a, only_b)})
        tb, tc = tb + only_a, tc + only_b
    n = len(groups[0][0])
    if len(groups) == 1:
        s = per_seed[0]
        rate = (tb + tc) / n
        return Difference(s["value"], s["ci"][0], s["ci"][1], n, 1, NEWCOMBE,
                          mde=mde_mcnemar(n, rate, confidence), p_value=s["p_value"],
                          discordant=(tb, tc), per_seed=tuple(per_seed))
    pairs = [{"d": [float(x) - float(y) for x, y in zip(a, b, strict=True)]} for a, b in groups]
    value, lo, hi, se = hierarchical_bootstrap(
        pairs, lambda g: math.fsum(g["d"]) / len(g["d"]), crossed=crossed,
        resamples=resamples, confidence=confidence, seed=seed)
    return Difference(value, lo, hi, n, len(groups), BOOTSTRAP_SEEDS,
                      mde=None if se is None else mde_from_se(se, confidence),
                      discordant=(tb, tc), per_seed=tuple(per_seed))


def paired_difference(
    groups: Sequence[tuple[Sequence[Any], Sequence[Any]]],
    aggregate: Aggregate,
    change: Callable[[float, float], float] = lambda x, y: x - y,
    *,
    crossed: bool = False,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Difference:
    """``change(aggregate(a), aggregate(b))`` of the same items under two models,
    averaged over seeds (one (a, b) pair of item lists per seed), with a paired
    bootstrap interval: items only for one seed, seeds then items for several."""
    _check_pairs(groups)
    data = [{"pairs": list(zip(a, b, strict=True))} for a, b in groups]

    def stat(g: Group) -> float:
        ps = g["pairs"]
        return change(aggregate([p[0] for p in ps]), aggregate([p[1] for p in ps]))

    value, lo, hi, se = hierarchical_bootstrap(data, stat, crossed=crossed, resamples=resamples,
                                               confidence=confidence, seed=seed)
    return _bootstrapped(value, lo, hi, se, len(groups[0][0]), len(groups), confidence)


def mean_difference(
    groups: Sequence[Sequence[Any]],
    aggregate: Aggregate,
    *,
    crossed: bool = False,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Difference:
    """``aggregate(rows)`` of rows that are already paired differences (each row is
    one item's A - B, e.g. KL(base ‖ tuned) of one text chunk), averaged over seeds
    (one list of rows per seed), with a bootstrap interval: items only for one seed,
    seeds then items for several. ``crossed`` as in :func:`hierarchical_bootstrap`."""
    if not groups or any(not g for g in groups):
        raise ValueError("a mean difference needs at least one seed, each with items")
    data = [{"rows": list(g)} for g in groups]
    value, lo, hi, se = hierarchical_bootstrap(
        data, lambda g: aggregate(g["rows"]), crossed=crossed, resamples=resamples,
        confidence=confidence, seed=seed)
    return _bootstrapped(value, lo, hi, se, len(groups[0]), len(groups), confidence)


def strata_difference(
    groups: Sequence[Group],
    statistic: Callable[[Group], float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Difference:
    """A difference computed from several strata of items per seed (e.g. trained
    items and held-out controls, resampled separately), seeds then items."""
    value, lo, hi, se = hierarchical_bootstrap(groups, statistic, resamples=resamples,
                                               confidence=confidence, seed=seed)
    n = min(len(v) for v in groups[0].values())
    return _bootstrapped(value, lo, hi, se, n, len(groups), confidence)


def _bootstrapped(value: float, lo: float | None, hi: float | None, se: float | None,
                  n: int, seeds: int, confidence: float) -> Difference:
    """A bootstrap difference, without an interval where one seed has too few items
    (see MIN_BOOTSTRAP_ITEMS) and without a detectable effect where the spread is 0."""
    if seeds == 1 and n < MIN_BOOTSTRAP_ITEMS:
        return Difference(value, None, None, n, seeds, TOO_FEW_ITEMS)
    # A spread at rounding level (every item's difference the same) is a spread of 0.
    mde = mde_from_se(se, confidence) if se and se > 1e-12 * max(1.0, abs(value)) else None
    return Difference(value, lo, hi, n, seeds,
                      BOOTSTRAP_SEEDS if seeds > 1 else BOOTSTRAP_ITEMS, mde=mde)


# ----------------------------------------------------------------------------- verdicts


def number(x: float, digits: int) -> str:
    return f"{x:.{digits}f}".replace("-", "−")


def describe(diff: Difference, digits: int = 3, unit: str = "") -> str:
    """``value [low, high]`` of a difference (with its unit)."""
    u = f" {unit}" if unit else ""
    if diff.low is None or diff.high is None:
        return f"{number(diff.value, digits)}{u} (no interval)"
    return (f"{number(diff.value, digits)} [{number(diff.low, digits)}, "
            f"{number(diff.high, digits)}]{u}")


def sample_size(diff: Difference) -> str:
    return f"n={diff.n}" + (f" × {diff.seeds} seeds" if diff.seeds > 1 else "")


def verdict(a: str, b: str, measure: str, diff: Difference, higher_is_better: bool, *,
            better: str = "", worse: str = "", digits: int = 3, unit: str = "") -> str:
    """One "what it says" line for A - B on a measure: a claim only where the
    interval excludes zero (its direction from ``higher_is_better``), otherwise that
    the data cannot tell, with the difference it could have detected.

    ``better``/``worse``: the verb phrases ("forgets less"); default "is better on M"."""
    numbers = f"{measure} {describe(diff, digits, unit)}"
    if diff.excludes_zero:
        up = diff.low is not None and diff.low > 0
        good = up == higher_is_better
        phrase = (better or f"is better on {measure} than") if good else (
            worse or f"is worse on {measure} than")
        return f"{a} {phrase} {b}: {numbers}"
    if diff.method == TOO_FEW_ITEMS:
        reach = f"{TOO_FEW_ITEMS}: n={diff.n}"
    elif diff.low is not None and diff.low == diff.high:
        reach = f"no variation between items at {sample_size(diff)}"
    elif diff.mde is None:
        reach = f"no interval at {sample_size(diff)}"
    else:
        u = f" {unit}" if unit else ""
        reach = f"could have detected ±{number(diff.mde, digits)}{u} at {sample_size(diff)}"
    return f"{a} vs {b}: the data cannot tell on {numbers} ({reach})"
