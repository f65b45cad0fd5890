"""What a metric is, and the registry that finds one by name.

Modelled on lm-evaluation-harness's metric and task registries: a *metric* (the name
a suite lists, e.g. ``gsm8k``) is one :class:`Metric` subclass, registered with
:func:`register_metric`, that owns everything about it:

* its settings: a dataclass (``settings_type``), the suite's YAML section of the
  metric's name (``gsm8k: {limit: 20}``), checked by :meth:`Metric.validate`;
* its data: :meth:`Metric.load` (once, before any model starts) and
  :meth:`Metric.data_fingerprint` (with the settings, the cache key's subset);
* its per-item compute on a served model (:meth:`Metric.compute`: score rows,
  which the cache stores);
* its *measures* (:class:`Measure`: a name, ``higher_is_better`` and an
  aggregation over the rows) and its lines of the run's summary (:class:`SummaryTerm`).

Per-item scoring is kept apart from aggregation (:data:`AGGREGATIONS`), so the
bootstrap (:mod:`eval.stats`) can re-aggregate resampled items. Metrics that read
the run directory alone (no model) are :class:`RunMetric`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from eval.cache import fingerprint
from eval.perplexity import bits_per_byte, weighted_perplexity
from teacher.core.config import ConfigError, did_you_mean, to_dict

Item = Mapping[str, Any]
Row = dict[str, Any]
Aggregation = Callable[[Sequence[Item]], float]

GROUPS = ("target", "forgetting", "memorization", "over_memorization", "train_data", "fit")

# The sections of a run's summary a metric can add a line to (see SummaryTerm).
TARGET_GAIN = "target_gain"
FORGETTING = "forgetting"  # one line per axis, each in its own unit (never averaged)
MEMORIZATION_INCREASE = "memorization_increase"


class UnknownMetricError(ValueError):
    """A metric name that is not in the registry (the message suggests close names)."""


# ----------------------------------------------------------------------------- aggregations


def _mean(key: str) -> Aggregation:
    def agg(items: Sequence[Item]) -> float:
        return math.fsum(float(it[key]) for it in items) / len(items)

    return agg


def _weighted_ppl(units: str) -> Aggregation:
    return lambda items: weighted_perplexity(
        [it["loglikelihood"] for it in items], [it[units] for it in items]
    )


def _bits_per_byte(items: Sequence[Item]) -> float:
    return bits_per_byte([it["loglikelihood"] for it in items], [it["bytes"] for it in items])


AGGREGATIONS: dict[str, Callable[[str], Aggregation]] = {
    "mean": _mean,
    "weighted_perplexity": _weighted_ppl,  # field = the units (words, bytes, tokens)
    "bits_per_byte": lambda _field: _bits_per_byte,
}


@dataclass(frozen=True)
class Measure:
    """One reported number: ``aggregation(field)`` over the items matching ``where``."""

    name: str
    higher_is_better: bool
    aggregation: str
    field: str
    where: tuple[tuple[str, Any], ...] = ()
    description: str = ""
    # A proportion of 0/1 items ("mean" of a binary field): its interval is the exact
    # (Clopper–Pearson) one of k/n, which stays honest at 0/n and n/n.
    exact: bool = False

    def select(self, items: Sequence[Item]) -> list[Item]:
        return [it for it in items if all(it.get(k) == v for k, v in self.where)]

    def aggregate_fn(self) -> Aggregation:
        return AGGREGATIONS[self.aggregation](self.field)


@dataclass(frozen=True)
class SummaryTerm:
    """One line of a run's summary: how a measure changed from the base model.

    ``path`` is where the line goes in ``results["summary"]`` (its first part one
    of :data:`TARGET_GAIN`, :data:`FORGETTING`, :data:`MEMORIZATION_INCREASE`);
    ``change(model value, base value)`` is the reported number, with a paired
    interval over the items both models have (Newcombe's for an exact proportion,
    else the bootstrap). For a :attr:`Metric.vs_base` metric, whose rows are already
    paired with the base, it is ``change(value, 0)``.
    """

    path: tuple[str, ...]
    measure: Measure
    unit: str
    change: Callable[[float, float], float]

    def __post_init__(self) -> None:
        sections = (TARGET_GAIN, FORGETTING, MEMORIZATION_INCREASE)
        if not self.path or self.path[0] not in sections:
            raise ValueError(f"summary path {self.path!r}: must start with one of {sections}")
        if self.path[0] == FORGETTING and len(self.path) != 2:  # one level: the axis
            raise ValueError(f"summary path {self.path!r}: forgetting lines are (forgetting, task)")


# ----------------------------------------------------------------------------- the metric

class Metric:
    """One metric of a suite, built from its settings (the suite's section).

    Subclasses set the class attributes and override what applies; a metric that
    runs on a model implements :meth:`load`, :meth:`data_fingerprint`,
    :meth:`compute` and :meth:`measures`.
    """

    name: ClassVar[str]
    group: ClassVar[str]  # one of GROUPS
    description: ClassVar[str]
    settings_type: ClassVar[type | None] = None  # the suite section's dataclass; None: none
    needs_model: ClassVar[bool] = True
    needs_run_dir: ClassVar[bool] = False  # reads the run's training data or loss history
    base_only: ClassVar[bool] = False  # computed on the base model only
    on_checkpoints: ClassVar[bool] = False  # also computed on each evaluated checkpoint
    # Compares the subject with the base model itself (its rows are already paired):
    # not computed on the base model, whose values are 0 by definition.
    vs_base: ClassVar[bool] = False
    # Loads the subject's model in-process: compute() gets a ModelFiles (base checkpoint
    # + adapter dir) instead of a ServedModel, and no service is started for it.
    in_process: ClassVar[bool] = False

    def __init__(self, settings: Any = None):
        if settings is None and self.settings_type is not None:
            settings = self.settings_type()
        self.settings = settings

    # --- settings

    def section(self) -> dict[str, Any]:
        """The settings that shape the metric's items (part of its cache key)."""
        return to_dict(self.settings) if dataclasses.is_dataclass(self.settings) else {}

    def validate(self) -> None:
        """Check the settings; raise ConfigError naming ``<metric>.<key>``."""

    def min_context(self) -> int:
        """Tokens of context the served model must hold (0: any)."""
        return 0

    def wants_checkpoints(self) -> bool:
        """Whether the run's checkpoints are evaluated too (for the on_checkpoints metrics)."""
        return False

    # --- data

    def load(self, run: Any, data_dir: Path | None) -> Any:
        """The metric's items (run: an :class:`teacher.core.rundir.RunDir`, when one is given)."""
        raise NotImplementedError

    def data_fingerprint(self, data: Any) -> Any:
        """JSON-able identity of the loaded items (ids and texts)."""
        raise NotImplementedError

    def subset(self, data: Any) -> str:
        """The cache key's subset: the settings and the data."""
        return fingerprint({"settings": self.section(), "data": self.data_fingerprint(data)})

    def count(self, data: Any) -> int:
        """Progress-bar total (0: no bar)."""
        return 0

    # --- model work and reporting

    async def compute(self, model: Any, data: Any, *, data_dir: Path | None,
                      progress: Any = None) -> list[Row]:
        """Per-item rows of the model ``model`` (:class:`eval.metrics.model.ServedModel`;
        :class:`eval.metrics.model.ModelFiles` for an ``in_process`` metric)."""
        raise NotImplementedError

    async def compute_many(self, base_path: Path, adapter_dirs: Sequence[Path],
                           data: Any, *, data_dir: Path | None = None) -> list[list[Row]]:
        """An ``in_process`` metric's rows for several adapters of one base, in order (an
        experiment scores all its runs at once). By default one :meth:`compute` each; a
        metric overrides it to share work, e.g. the base model's pass."""
        from eval.metrics.model import ModelFiles

        return [await self.compute(ModelFiles(Path(base_path), Path(d)), data, data_dir=data_dir)
                for d in adapter_dirs]

    def measures(self) -> list[Measure]:
        return []

    def headline(self) -> Measure:
        """The measure reported per checkpoint (on_checkpoints metrics)."""
        raise NotImplementedError(f"metric {self.name!r} has no per-checkpoint measure")

    def summary(self) -> list[SummaryTerm]:
        return []

    def compared(self) -> list[Measure]:
        """Measures every arm is also compared on, paired per item, beside those of
        its summary lines (a continuous measure that has no summary line)."""
        return []


class TaskMetric(Metric):
    """A metric over benchmark examples (:class:`teacher.core.tasks.Example`), one
    progress step per example."""

    def data_fingerprint(self, data: Sequence[Any]) -> Any:
        return examples_fingerprint(data)

    def count(self, data: Sequence[Any]) -> int:
        return len(data)


class RunMetric(Metric):
    """A metric read from the run directory alone: named values, no interval."""

    needs_model = False
    needs_run_dir = True

    def values(self, run: Any) -> dict[str, float | None]:
        raise NotImplementedError

    def entries(self, values: Mapping[str, float | None]) -> dict[str, dict[str, Any]]:
        """The results' ``metrics`` entries of the values (all lower-is-better)."""
        return {f"{self.name}/{k}": {"group": self.group, "higher_is_better": False, "value": v,
                                     "ci": [None, None], "n": 1}
                for k, v in values.items() if v is not None}


# ----------------------------------------------------------------------------- helpers


def check_limit(key: str, value: int | None) -> None:
    """An item limit: >= 1, or None for all."""
    if value is not None and value < 1:
        raise ConfigError(f"{key}: must be >= 1 or null (all), got {value}")


def examples_fingerprint(examples: Sequence[Any]) -> str:
    """Identity of benchmark examples (:class:`teacher.core.tasks.Example`)."""
    return fingerprint([(x.id, x.question, x.answer) for x in examples])


def train_examples_fingerprint(examples: Sequence[Any]) -> str:
    """Identity of a run's training examples (:class:`teacher.core.rundir.TrainExample`)."""
    return fingerprint([(x.id, x.prompt, x.response) for x in examples])


# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Metric]] = {}
M = TypeVar("M", bound=type[Metric])


def register_metric(cls: M) -> M:
    """Class decorator: make a metric listable in suites under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"metric {cls.name!r} is registered twice")
    if cls.group not in GROUPS:
        raise ValueError(f"metric {cls.name!r}: group {cls.group!r} is not one of {GROUPS}")
    _REGISTRY[cls.name] = cls
    return cls


def registered_metrics() -> list[type[Metric]]:
    """Every metric, in registration order (the order of the suite's sections)."""
    return list(_REGISTRY.values())


def get_metric(name: str) -> type[Metric]:
    """The metric called ``name``; unknown names raise with suggestions."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMetricError(
            f"unknown metric {name!r}{did_you_mean(name, _REGISTRY, n=2)} "
            f"(known: {', '.join(_REGISTRY)})"
        ) from None
