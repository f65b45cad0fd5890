"""Eval suites: which metrics to run, on how many items, with which settings.

Suites are YAML files in ``eval/suites/`` (``smoke``, ``quick``, ``standard``,
``full``) or any YAML path, loaded with :func:`teacher.core.config.load_config` so
unknown keys fail with a "did you mean" and ``key=value`` overrides work
(``--set gsm8k.limit=20``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.loading import EngineSettings
from eval.memorization import DEFAULT_ROUGE_THRESHOLD, SETTINGS
from eval.metrics import bbh_subtasks, get_metric
from teacher.core.config import ConfigError, load_config, to_dict
from teacher.core.templates import get_template
from teacher.serving.engine import available_engines

SUITES_DIR = Path(__file__).resolve().parent / "suites"


class UnknownSuiteError(ValueError):
    """A suite name that is neither a shipped suite nor a YAML file."""


@dataclass
class Gsm8kSettings:
    split: str = "test"
    limit: int | None = 50
    # The student's training format by default (zero-shot chat, "#### N" answer line);
    # "gsm8k-cot-8shot" is lm-eval's gsm8k_cot prompt (used for the cross-check).
    template: str = "gsm8k-cot-zeroshot"
    max_new_tokens: int = 256


@dataclass
class BbhSettings:
    subtasks: list[str] = field(default_factory=lambda: ["all"])
    limit: int | None = 10  # items per subtask
    max_new_tokens: int = 256  # lm-eval allows 1024; the stop strings end most answers


@dataclass
class WikitextSettings:
    split: str = "test"
    limit: int | None = None  # documents (62 in the test split)
    max_length: int = 2048  # rolling-window length (lm-eval: the model's max length)


@dataclass
class MemorizationSettings:
    n: int = 50  # trained examples, and as many held-out controls
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    rouge_threshold: float = DEFAULT_ROUGE_THRESHOLD
    max_new_tokens: int = 512  # capped at the longest compared response + 16


@dataclass
class ReferencePplSettings:
    limit: int | None = 50
    template: str = "gsm8k-cot-zeroshot"  # the prompt the references are scored after
    checkpoints: bool = True  # also per checkpoint, beside gsm8k accuracy


@dataclass
class TrainPplSettings:
    limit: int | None = 50


@dataclass
class Suite:
    name: str = ""
    description: str = ""
    metrics: list[str] = field(
        default_factory=lambda: [
            "gsm8k", "bbh", "wikitext", "memorization", "reference_ppl", "train_ppl", "fit"
        ]
    )
    gsm8k: Gsm8kSettings = field(default_factory=Gsm8kSettings)
    bbh: BbhSettings = field(default_factory=BbhSettings)
    wikitext: WikitextSettings = field(default_factory=WikitextSettings)
    memorization: MemorizationSettings = field(default_factory=MemorizationSettings)
    reference_ppl: ReferencePplSettings = field(default_factory=ReferencePplSettings)
    train_ppl: TrainPplSettings = field(default_factory=TrainPplSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def validate(self) -> Suite:
        """Check names and ranges; raises ConfigError / UnknownMetricError naming the key."""
        if not self.metrics:
            raise ConfigError("metrics: the suite lists no metrics")
        for name in self.metrics:
            get_metric(name)
        bbh_subtasks({"subtasks": self.bbh.subtasks})
        for s in self.memorization.settings:
            if s not in SETTINGS:
                raise ConfigError(
                    f"memorization.settings: unknown setting {s!r}; one of {SETTINGS}"
                )
        for key, tpl in (("gsm8k.template", self.gsm8k.template),
                         ("reference_ppl.template", self.reference_ppl.template)):
            try:
                t = get_template(tpl)
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None
            if t.task != "gsm8k":
                raise ConfigError(f"{key}: template {tpl!r} is for {t.task}, not gsm8k")
        if self.engine.name not in available_engines():
            raise ConfigError(f"engine.name: unknown engine {self.engine.name!r}; "
                              f"one of {available_engines()}")
        for key, value in (("gsm8k.limit", self.gsm8k.limit), ("bbh.limit", self.bbh.limit),
                           ("wikitext.limit", self.wikitext.limit),
                           ("reference_ppl.limit", self.reference_ppl.limit),
                           ("train_ppl.limit", self.train_ppl.limit)):
            if value is not None and value < 1:
                raise ConfigError(f"{key}: must be >= 1 or null (all), got {value}")
        if self.memorization.n < 1:
            raise ConfigError(f"memorization.n: must be >= 1, got {self.memorization.n}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence: must be in (0, 1), got {self.confidence}")
        return self

    def section(self, metric: str) -> dict[str, Any]:
        """The settings that shape a metric's items (part of its cache key)."""
        if metric == "fit":
            return {}
        value = getattr(self, metric)
        return to_dict(value) if dataclasses.is_dataclass(value) else {}

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


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
    names = list_suites()
    close = difflib.get_close_matches(str(name_or_path), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownSuiteError(
        f"unknown suite {str(name_or_path)!r}{hint} (shipped suites: {', '.join(names)}; "
        "or pass a path to a .yaml file)"
    )


def load_suite(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Suite:
    path = suite_path(name_or_path)
    suite = load_config(Suite, path, overrides)
    if not suite.name:
        suite.name = path.stem
    return suite.validate()


def fingerprint(parts: Any) -> str:
    """Short stable hash of JSON-able data (cache keys, data subsets)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
