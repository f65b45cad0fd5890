"""Eval suites: which metrics to run, on how many items, with which settings.

Suites are YAML files in ``eval/suites/`` (``smoke``, ``quick``, ``standard``,
``full``) or any YAML path, loaded with :func:`teacher.core.config.load_config` so
unknown keys fail with a "did you mean" and ``key=value`` overrides work
(``--set gsm8k.limit=20``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

from eval.loading import eval_engine
from eval.metrics import DEFAULT_METRICS, Metric, get_metric, registered_metrics
from teacher.core.config import ConfigError, did_you_mean, load_config, to_dict
from teacher.serving.engine import EngineSettings, available_engines

SUITES_DIR = Path(__file__).resolve().parent / "suites"
_LATER_ENGINE_KEYS = ("device", "seed", "max_adapters", "max_lora_rank")


class UnknownSuiteError(ValueError):
    """A suite name that is neither a shipped suite nor a YAML file."""


class SuiteMethods:
    """What a :data:`Suite` does; its fields are built from the metric registry."""

    name: str
    metrics: list[str]
    engine: EngineSettings
    confidence: float

    def metric(self, name: str) -> Metric:
        """Metric ``name`` with this suite's settings for it."""
        cls = get_metric(name)
        return cls(getattr(self, name) if cls.settings_type is not None else None)

    def validate(self) -> Suite:
        """Check names and ranges; raises ConfigError / UnknownMetricError naming the key."""
        if not self.metrics:
            raise ConfigError("metrics: the suite lists no metrics")
        for name in self.metrics:
            get_metric(name)
        for cls in registered_metrics():  # every section, listed or not
            self.metric(cls.name).validate()
        if self.engine.name not in available_engines():
            raise ConfigError(f"engine.name: unknown engine {self.engine.name!r}; "
                              f"one of {available_engines()}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence: must be in (0, 1), got {self.confidence}")
        return self  # type: ignore[return-value]

    def section(self, metric: str) -> dict[str, Any]:
        """The settings that shape a metric's items (part of its cache key)."""
        return self.metric(metric).section()

    def to_dict(self) -> dict[str, Any]:
        data = to_dict(self)
        # Engine settings a suite did not use to have are written only when set, so
        # results written before them still match (results.json's suite config).
        engine, default = data["engine"], to_dict(EngineSettings())
        for key in _LATER_ENGINE_KEYS:
            if engine[key] == default[key]:
                del engine[key]
        return data


def _suite_fields() -> list[tuple[str, Any, Any]]:
    """The suite's keys: its metrics, one section per metric with settings (named
    after the metric, typed by its settings dataclass), then engine and statistics."""
    sections = [(cls.name, cls.settings_type, field(default_factory=cls.settings_type))
                for cls in registered_metrics() if cls.settings_type is not None]
    return [
        ("name", str, field(default="")),
        ("description", str, field(default="")),
        ("metrics", list[str], field(default_factory=lambda: list(DEFAULT_METRICS))),
        *sections,
        ("engine", EngineSettings, field(default_factory=eval_engine)),
        ("bootstrap_resamples", int, field(default=1000)),
        ("confidence", float, field(default=0.95)),
        ("seed", int, field(default=0)),
    ]


Suite = dataclasses.make_dataclass("Suite", _suite_fields(), bases=(SuiteMethods,))
Suite.__module__ = __name__
Suite.__doc__ = """An eval suite: the metrics to run, each metric's section, the engine.

``suite.gsm8k`` is the gsm8k metric's settings (:class:`eval.metrics.gsm8k.Gsm8kSettings`),
and so on for every registered metric that has settings."""


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def suite_path(name_or_path: str | Path) -> Path:
    """A shipped suite by name, or a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UnknownSuiteError(f"suite file {path} does not exist")
        return path
    candidate = SUITES_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    name, names = str(name_or_path), list_suites()
    raise UnknownSuiteError(
        f"unknown suite {name!r}{did_you_mean(name, names)} (shipped suites: "
        f"{', '.join(names)}; or pass a path to a .yaml file)"
    )


def load_suite(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Suite:
    path = suite_path(name_or_path)
    suite = load_config(Suite, path, overrides)
    if not suite.name:
        suite.name = path.stem
    return suite.validate()
