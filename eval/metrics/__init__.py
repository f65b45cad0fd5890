"""The metrics ``distill-eval`` can run: one module per metric, registered by name.

What a metric is (settings, data, compute, measures, summary lines) is defined in
:mod:`eval.metrics.base`; the model they run on in :mod:`eval.metrics.model`.
Every other module of this package is one metric and registers itself on import
(``@register_metric``); importing the package imports them all, so adding a
metric is adding a module here (and its test).

* ``gsm8k`` (target): strict-match / flexible-extract accuracy, lm-eval's rules;
* ``bbh`` (forgetting): BIG-Bench-Hard 3-shot CoT exact match, overall and per subtask;
* ``wikitext`` (forgetting): word / byte perplexity and bits per byte;
* ``memorization``: copy rates of trained responses vs held-out controls;
* ``reference_ppl`` (over-memorization): perplexity of the gsm8k test references;
* ``train_ppl``: perplexity of the run's training responses under the base model;
* ``fit``: final train loss, validation loss and their gap.
* ``bbh_mc`` (forgetting): BIG-Bench-Hard accuracy by option log-likelihood (no
  generation), the 23 multiple-choice subtasks, with exact intervals.
"""

from __future__ import annotations

import importlib
import pkgutil

from eval.metrics.base import (
    GROUPS,
    Measure,
    Metric,
    RunMetric,
    SummaryTerm,
    TaskMetric,
    UnknownMetricError,
    get_metric,
    register_metric,
    registered_metrics,
)

# The metrics a suite runs when it lists none, in the order results have always
# shown them (suite sections, "known:" in errors, summary lines); any other metric
# module registers after them, by name.
DEFAULT_METRICS = ("gsm8k", "bbh", "wikitext", "memorization", "reference_ppl", "train_ppl",
                   "fit")
_NOT_METRICS = {"base", "model"}


def _import_metric_modules() -> None:
    found = {m.name for m in pkgutil.iter_modules(__path__)} - _NOT_METRICS
    for name in [*DEFAULT_METRICS, *sorted(found - set(DEFAULT_METRICS))]:
        importlib.import_module(f"{__name__}.{name}")


_import_metric_modules()

__all__ = [
    "DEFAULT_METRICS",
    "GROUPS",
    "Measure",
    "Metric",
    "RunMetric",
    "SummaryTerm",
    "TaskMetric",
    "UnknownMetricError",
    "get_metric",
    "register_metric",
    "registered_metrics",
]
