"""``train_ppl`` (train data): token perplexity of the run's training responses under
the base model (how surprising the training data was)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.metrics.base import (
    Measure,
    Metric,
    Row,
    check_limit,
    register_metric,
    train_examples_fingerprint,
)


@dataclass
class TrainPplSettings:
    limit: int | None = 50


@register_metric
class TrainPpl(Metric):
    name = "train_ppl"
    group = "train_data"
    description = "perplexity of the run's training responses under the base model"
    settings_type = TrainPplSettings
    needs_run_dir = True
    base_only = True
    settings: TrainPplSettings

    def validate(self) -> None:
        check_limit("train_ppl.limit", self.settings.limit)

    def load(self, run: Any, data_dir: Path | None) -> list[Any]:
        return run.examples("train")[: self.settings.limit]

    def data_fingerprint(self, data: list[Any]) -> Any:
        return train_examples_fingerprint(data)

    async def compute(self, model: Any, data: list[Any], *, data_dir: Path | None,
                      progress: Any = None) -> list[Row]:
        scores = await model.score([(ex.prompt, ex.response) for ex in data])
        return [{"id": ex.id, "loglikelihood": -nll, "tokens": n}
                for ex, (nll, n) in zip(data, scores, strict=True)]

    def measures(self) -> list[Measure]:
        return [Measure("train_ppl", False, "weighted_perplexity", "tokens")]
