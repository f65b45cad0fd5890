"""Intervals, tests, detectable effects and verdicts of eval.stats against known values."""

from __future__ import annotations

import numpy as np
import pytest

from eval.stats import (
    BOOTSTRAP_ITEMS,
    BOOTSTRAP_SEEDS,
    MIN_BOOTSTRAP_ITEMS,
    NEWCOMBE,
    TOO_FEW_ITEMS,
    Difference,
    clopper_pearson,
    hierarchical_bootstrap,
    mcnemar_exact,
    mde_from_se,
    mde_mcnemar,
    newcombe_paired,
    paired_difference,
    paired_proportions,
    proportion,
    verdict,
    wilson,
)


def mean(xs):
    return sum(xs) / len(xs)


def test_clopper_pearson_known_values():
    # 0/16: the upper bound is 1 - 0.025 ** (1/16) = 0.2059 (the issue's 20.6%).
    assert clopper_pearson(0, 16) == (0.0, pytest.approx(1 - 0.025 ** (1 / 16), abs=1e-9))
    assert clopper_pearson(0, 16)[1] == pytest.approx(0.2059, abs=1e-4)
    # 5/10 and 37/120 (scipy.stats.binomtest(...).proportion_ci(method="exact")).
    assert clopper_pearson(5, 10) == pytest.approx((0.187086028447, 0.812913971553), abs=1e-9)
    assert clopper_pearson(37, 120) == pytest.approx((0.227255119634, 0.399136764532), abs=1e-9)
    assert clopper_pearson(16, 16)[1] == 1.0
    est = proportion(0, 16)
    assert (est.value, est.low, est.n) == (0.0, 0.0, 16)


def test_wilson_known_values():
    # 5/10: 0.2366, 0.7634 (Wilson 1927; scipy's method="wilson").
    assert wilson(5, 10) == pytest.approx((0.236593090513, 0.763406909487), abs=1e-9)
    # 0/n: upper bound z^2 / (n + z^2).
    z2 = 1.959963984540054 ** 2
    assert wilson(0, 16) == pytest.approx((0.0, z2 / (16 + z2)), abs=1e-12)
    assert proportion(3, 16, method="wilson").low == pytest.approx(wilson(3, 16)[0])
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson(17, 16)


def test_scipy_agrees_where_installed():
    st = pytest.importorskip("scipy.stats")
    for k, n in [(0, 16), (3, 16), (9, 40), (199, 200)]:
        ref = st.binomtest(k, n).proportion_ci(method="exact")
        assert clopper_pearson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-8)
        ref = st.binomtest(k, n).proportion_ci(method="wilson")
        assert wilson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-10)
    for b, c in [(12, 2), (5, 5), (0, 7), (30, 11)]:
        assert mcnemar_exact(b, c) == pytest.approx(st.binomtest(b, b + c).pvalue, abs=1e-12)


def test_exact_mcnemar_known_values():
    # b=12, c=2: 2 * P(X <= 2 | 14, 1/2) = 2 * (1 + 14 + 91) / 2**14.
    assert mcnemar_exact(12, 2) == pytest.approx(2 * 106 / 2 ** 14, abs=1e-15)
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)


def test_newcombe_paired_interval_textbook_example():
    # Newcombe (1998), Stat Med 17:2635, example (a, b, c, d) = (36, 12, 2, 0):
    # method 10 gives 0.0569 to 0.3404 for the difference 0.2.
    diff, lo, hi = newcombe_paired(36, 12, 2, 0)
    assert diff == pytest.approx(0.2)
    assert (lo, hi) == pytest.approx((0.0569, 0.3404), abs=1e-4)
    # Symmetric: swapping the arms mirrors the interval.
    d2, lo2, hi2 = newcombe_paired(36, 2, 12, 0)
    assert (d2, lo2, hi2) == pytest.approx((-0.2, -hi, -lo))


def test_detectable_effects():
    # (1.96 + 0.8416) * SE.
    assert mde_from_se(0.01) == pytest.approx(0.028016, abs=1e-6)
    # Connor (1987): at the returned delta the sample-size formula gives n.
    za, zb = 1.959963984540054, 0.8416212335729143
    delta = mde_mcnemar(100, 0.2)
    assert (za * 0.2 ** 0.5 + zb * (0.2 - delta ** 2) ** 0.5) ** 2 / delta ** 2 == (
        pytest.approx(100, rel=1e-6))
    assert mde_mcnemar(400, 0.2) < delta  # more pairs, smaller detectable effect


def test_too_few_items_give_no_interval_and_no_claim():
    # 4 items, a large consistent difference: a percentile bootstrap would exclude zero,
    # but over so few items it covers far less than 95%, so nothing is claimed.
    a, b = [0.9, 1.0, 1.1, 1.0], [0.0, 0.1, 0.0, 0.1]
    d = paired_difference([(a, b)], mean)
    assert len(a) < MIN_BOOTSTRAP_ITEMS
    assert d.method == TOO_FEW_ITEMS and (d.low, d.high, d.mde) == (None, None, None)
    assert d.value == pytest.approx(0.95)
    line = verdict("x", "y", "m", d, True)
    assert "cannot tell" in line and "too few items" in line


def test_no_spread_gives_no_detectable_effect():
    a = b = [1.0] * 12
    d = paired_difference([(a, b)], mean)
    assert (d.value, d.low, d.high, d.mde) == (0.0, 0.0, 0.0, None)
    assert "no variation between items" in verdict("x", "y", "m", d, True)


def test_paired_bootstrap_recovers_a_known_difference():
    rng = np.random.default_rng(3)
    base = rng.normal(0.0, 1.0, 300)  # large item variance, shared by both arms
    a = list(base + 0.25 + rng.normal(0, 0.05, 300))
    b = list(base)
    d = paired_difference([(a, b)], mean)
    assert d.method == BOOTSTRAP_ITEMS and (d.n, d.seeds) == (300, 1)
    assert d.value == pytest.approx(0.25, abs=0.01)
    assert d.low < 0.25 < d.high and d.high - d.low < 0.02  # pairing removes item variance
    # Standard error of a paired mean: sd(a - b) / sqrt(n).
    sd = np.std(np.subtract(a, b), ddof=1) / np.sqrt(300)
    assert d.mde == pytest.approx(mde_from_se(sd), rel=0.15)
    # A change function and a non-mean aggregation work on the same pairs.
    ratio = paired_difference([(a, b)], lambda xs: mean(xs) + 10, lambda x, y: x / y - 1)
    assert ratio.value == pytest.approx(0.25 / (mean(b) + 10), rel=0.05)


def test_hierarchical_bootstrap_carries_seed_variance():
    rng = np.random.default_rng(4)
    base = rng.normal(0.0, 1.0, 100)
    offsets = [0.1, 0.5, 0.3, 0.7]  # run-to-run differences much larger than item noise
    groups = [(list(base + o + rng.normal(0, 0.02, 100)), list(base)) for o in offsets]
    d = paired_difference(groups, mean, crossed=True)
    assert d.method == BOOTSTRAP_SEEDS and d.seeds == 4
    assert d.value == pytest.approx(0.4, abs=0.01)
    assert d.low < 0.3 and d.high > 0.5  # the seeds' spread, not the items', sets the width
    one = paired_difference(groups[:1], mean)
    assert one.high - one.low < 0.02
    # Nested (different items per seed) works too; crossed needs equal shapes.
    nested = paired_difference([(g[0][:50 + i], g[1][:50 + i]) for i, g in enumerate(groups)],
                               mean)
    assert nested.low < nested.value < nested.high
    with pytest.raises(ValueError, match="same strata"):
        hierarchical_bootstrap([{"x": [1, 2]}, {"x": [1, 2, 3]}], lambda g: 0.0, crossed=True)


def test_paired_proportions_one_and_several_seeds():
    a = [1] * 12 + [0] * 2 + [1] * 30 + [0] * 6
    b = [0] * 12 + [1] * 2 + [1] * 30 + [0] * 6
    d = paired_proportions([(a, b)])
    assert d.method == NEWCOMBE and d.discordant == (12, 2)
    assert d.value == pytest.approx(10 / 50)
    assert d.p_value == pytest.approx(mcnemar_exact(12, 2))
    assert (d.low, d.high) == pytest.approx(newcombe_paired(30, 12, 2, 6)[1:])
    assert d.mde == pytest.approx(mde_mcnemar(50, 14 / 50))
    # No discordant pair (0/16 vs 0/16): the interval and the detectable effect stay open.
    z = paired_proportions([([0] * 16, [0] * 16)])
    assert z.value == 0 and z.low < 0 < z.high and z.mde > 0.2
    several = paired_proportions([(a, b), (b, a), (a, b)], crossed=True)
    assert several.method == BOOTSTRAP_SEEDS and len(several.per_seed) == 3
    assert several.value == pytest.approx((0.2 - 0.2 + 0.2) / 3)
    with pytest.raises(ValueError, match="0/1"):
        paired_proportions([([0.5], [1])])


def diff(value, low, high, mde=0.05, n=40):
    return Difference(value, low, high, n, 1, BOOTSTRAP_ITEMS, mde=mde)


@pytest.mark.parametrize("higher", [True, False])
def test_verdict_cannot_tell_when_the_interval_spans_zero(higher):
    line = verdict("trace", "ground truth", "KL", diff(-0.01, -0.03, 0.01, mde=0.028), higher)
    assert line == ("trace vs ground truth: the data cannot tell on KL −0.010 [−0.030, 0.010] "
                    "(could have detected ±0.028 at n=40)")
    no_ci = verdict("a", "b", "bpb", Difference(0.1, None, None, 1, 1, BOOTSTRAP_ITEMS), higher)
    assert "cannot tell" in no_ci and "no interval at n=1" in no_ci


@pytest.mark.parametrize(("higher", "value", "low", "high", "phrase"), [
    (False, -0.021, -0.030, -0.012, "forgets less than"),  # lower KL is better: less
    (False, 0.021, 0.012, 0.030, "forgets more than"),
    (True, 4.0, 1.0, 7.0, "forgets less than"),  # higher BBH accuracy kept is better
    (True, -4.0, -7.0, -1.0, "forgets more than"),
])
def test_verdict_claims_the_right_direction(higher, value, low, high, phrase):
    line = verdict("trace", "ground truth", "KL", diff(value, low, high), higher,
                   better="forgets less than", worse="forgets more than")
    assert line.startswith(f"trace {phrase} ground truth: KL ")
    assert "cannot tell" not in line
    default = verdict("trace", "gt", "acc", diff(value, low, high), higher)
    assert ("is better on acc than" in default) == (phrase == "forgets less than")


def test_verdict_wording_matches_the_issue():
    line = verdict("trace", "ground truth", "KL", diff(-0.021, -0.030, -0.012), False,
                   better="forgets less than", worse="forgets more than")
    assert line == "trace forgets less than ground truth: KL −0.021 [−0.030, −0.012]"
    seeds = Difference(0.2, -0.1, 0.5, 16, 3, BOOTSTRAP_SEEDS, mde=0.4)
    assert "at n=16 × 3 seeds" in verdict("a", "b", "m", seeds, True)
    pts = diff(0.2, -0.04, 0.48, mde=0.25).scaled(100)
    assert pts.mde == pytest.approx(25.0) and pts.low == pytest.approx(-4.0)
    flipped = diff(0.2, 0.1, 0.3).scaled(-1)
    assert (flipped.low, flipped.high) == pytest.approx((-0.3, -0.1))
