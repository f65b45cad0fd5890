"""Metrics, intervals, suites and the cache on tiny hand-checked inputs (no model)."""

from __future__ import annotations

import pytest

from eval.cache import ResultCache
from eval.metrics import (
    DEFAULT_METRICS,
    GROUPS,
    Metric,
    RunMetric,
    UnknownMetricError,
    get_metric,
    register_metric,
    registered_metrics,
)
from eval.stats import bootstrap, paired_bootstrap
from eval.suite import Suite, UnknownSuiteError, list_suites, load_suite
from teacher.core.config import ConfigError

# ----------------------------------------------------------------------------- intervals


def test_bootstrap_interval_of_a_mean():
    items = [1.0] * 50 + [0.0] * 50
    est = bootstrap(items, lambda xs: sum(xs) / len(xs), resamples=2000, seed=1)
    assert est.value == 0.5 and est.n == 100
    # Normal approximation: 0.5 ± 1.96 * 0.05.
    assert est.low == pytest.approx(0.402, abs=0.03) and est.high == pytest.approx(0.598, abs=0.03)
    again = bootstrap(items, lambda xs: sum(xs) / len(xs), resamples=2000, seed=1)
    assert (again.low, again.high) == (est.low, est.high)  # seeded: reproducible


def test_bootstrap_edge_cases():
    const = bootstrap([3.0] * 10, lambda xs: sum(xs) / len(xs))
    assert (const.low, const.high) == (3.0, 3.0)
    single = bootstrap([1.0], lambda xs: xs[0])
    assert single.low is None and single.high is None
    with pytest.raises(ValueError):
        bootstrap([], lambda xs: 0.0)


def test_paired_bootstrap_difference():
    a = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    diff = lambda x, y: x - y  # noqa: E731
    same = paired_bootstrap(a, a, diff, mean)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)  # pairing removes noise
    better = paired_bootstrap([1.0] * 6, a, diff, mean)
    assert better.value == pytest.approx(1 / 3) and better.low >= 0.0
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0], diff, mean)


# ----------------------------------------------------------------------------- registry, suites


def test_unknown_metric_and_suite_errors():
    with pytest.raises(UnknownMetricError, match=r"did you mean 'gsm8k'"):
        get_metric("gsm8kk")
    with pytest.raises(UnknownMetricError, match="unknown metric 'bleu'"):
        load_suite("smoke", ["metrics=[gsm8k, bleu]"])
    with pytest.raises(UnknownSuiteError, match=r"did you mean 'smoke'"):
        load_suite("smok")
    with pytest.raises(ConfigError, match=r"did you mean 'limit'"):
        load_suite("smoke", ["gsm8k.limt=3"])
    with pytest.raises(UnknownMetricError, match="unknown BBH subtask 'navigat'"):
        load_suite("smoke", ["bbh.subtasks=[navigat]"])
    with pytest.raises(ConfigError, match=r"gsm8k\.template"):
        load_suite("smoke", ["gsm8k.template=bbh-cot-3shot"])


@pytest.mark.parametrize("cls", registered_metrics(), ids=lambda c: c.name)
def test_every_registered_metric_keeps_the_contract(cls):
    """What the generic runner relies on, for every metric module (new ones too)."""
    assert cls.group in GROUPS and cls.description
    metric = cls()  # default settings
    metric.validate()
    suite = Suite()
    if cls.settings_type is None:
        assert metric.section() == {} and cls.name not in suite.to_dict()
    else:  # the suite section of the metric's name holds its settings
        assert isinstance(getattr(suite, cls.name), cls.settings_type)
        assert metric.section() == suite.to_dict()[cls.name] == suite.section(cls.name)
    if isinstance(metric, RunMetric):
        assert not cls.needs_model and cls.needs_run_dir
        return
    measures = metric.measures()
    names = [m.name for m in measures]
    assert measures and len(set(names)) == len(names)
    assert all(n.split("/")[0] == cls.name for n in names)
    assert all(term.measure in measures for term in metric.summary())
    assert all(m in measures for m in metric.compared())
    if cls.on_checkpoints:
        assert metric.headline() in measures


def test_registry_refuses_duplicates_and_unknown_groups():
    class Again(Metric):
        name, group, description = "gsm8k", "target", "a second gsm8k"

    class Odd(Metric):
        name, group, description = "odd", "vibes", "a metric of no known group"

    with pytest.raises(ValueError, match="registered twice"):
        register_metric(Again)
    with pytest.raises(ValueError, match="group 'vibes'"):
        register_metric(Odd)
    assert [c.name for c in registered_metrics()][: len(DEFAULT_METRICS)] == list(DEFAULT_METRICS)


def test_shipped_suites_load():
    assert {"smoke", "quick", "standard", "full"} <= set(list_suites())
    for name in list_suites():
        suite = load_suite(name)
        assert suite.name == name and suite.metrics


def test_cache_hits_and_misses(tmp_path):
    cache = ResultCache(tmp_path)
    key = cache.key({"path": "m", "revision": "r"}, "abc", "gsm8k", "subset1")
    assert cache.get(key) is None
    cache.put(key, [{"id": "a", "strict_match": 1.0}])
    assert cache.get(key) == [{"id": "a", "strict_match": 1.0}]
    other = cache.key({"path": "m", "revision": "r"}, "abd", "gsm8k", "subset1")  # other adapter
    assert cache.get(other) is None
    assert (cache.hits, cache.misses) == (1, 2)
    off = ResultCache(tmp_path, enabled=False)
    assert off.get(key) is None
