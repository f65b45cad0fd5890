"""``reference_ppl`` (over-memorization, Ruan et al. 2025): token perplexity of the
gsm8k test references after their prompt, beside accuracy, per checkpoint too.

Each row also holds the item's mean NLL per token (``nll_mean``): the continuous
target measure ``reference_ppl/gsm8k_nll`` (the mean over items), which the
comparison pairs per item between arms. The references are scored after the
training prompt (``gsm8k-cot-zeroshot``), not after the evaluation's boxed prompt:
they end in that prompt's "#### N" line, not in the boxed answer that prompt asks
for, so after it their NLL would charge the format as much as the solution; and
the arms train on the training prompt, so after it the references measure what
training moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.metrics.base import (
    Measure,
    Row,
    TaskMetric,
    check_limit,
    register_metric,
)
from eval.metrics.gsm8k import gsm8k_template
from teacher.core.tasks import Example, get_task
from teacher.core.templates import get_template


@dataclass
class ReferencePplSettings:
    limit: int | None = 50
    # The prompt the references are scored after: the one whose "#### N" format they have.
    template: str = "gsm8k-cot-zeroshot"
    checkpoints: bool = True  # also per checkpoint, beside gsm8k accuracy


PERPLEXITY = Measure("reference_ppl/gsm8k", False, "weighted_perplexity", "tokens")
# Per item first, so every item weighs the same and two arms pair item by item.
MEAN_NLL = Measure("reference_ppl/gsm8k_nll", False, "mean", "nll_mean",
                   description="mean over items of the reference's NLL per token (nats)")


@register_metric
class ReferencePpl(TaskMetric):
    name = "reference_ppl"
    group = "over_memorization"
    description = ("perplexity of the gsm8k test references (Ruan et al. 2025), "
                   "per checkpoint too")
    settings_type = ReferencePplSettings
    on_checkpoints = True
    settings: ReferencePplSettings

    def validate(self) -> None:
        gsm8k_template("reference_ppl.template", self.settings.template)
        check_limit("reference_ppl.limit", self.settings.limit)

    def wants_checkpoints(self) -> bool:
        return self.settings.checkpoints

    def load(self, run: Any, data_dir: Path | None) -> list[Example]:
        return get_task("gsm8k").load("test", data_dir, self.settings.limit)

    def count(self, data: list[Example]) -> int:
        return 0  # scored in one go: no progress bar

    async def compute(self, model: Any, data: list[Example], *, data_dir: Path | None,
                      progress: Any = None) -> list[Row]:
        task, tpl = get_task("gsm8k"), get_template(self.settings.template)
        pairs = [(task.prompt(ex, tpl, data_dir=data_dir), task.reference_response(ex))
                 for ex in data]
        scores = await model.score(pairs)
        return [{"id": ex.id, "loglikelihood": -nll, "tokens": n,
                 "nll_mean": nll / n if n else 0.0}
                for ex, (nll, n) in zip(data, scores, strict=True)]

    def measures(self) -> list[Measure]:
        return [PERPLEXITY, MEAN_NLL]

    def compared(self) -> list[Measure]:
        return [MEAN_NLL]

    def headline(self) -> Measure:
        return PERPLEXITY
