"""``bbh`` (forgetting): BIG-Bench-Hard 3-shot CoT exact match, lm-eval bbh cot_fewshot rules.

``exact_match`` over all items (lm-eval's group aggregate, weighted by size) and
per subtask; the "get-answer" filter, then plain (case-sensitive) exact match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.metrics.base import (
    FORGETTING,
    Measure,
    Metric,
    Row,
    SummaryTerm,
    UnknownMetricError,
    check_limit,
    examples_fingerprint,
    register_metric,
)
from teacher.core.config import did_you_mean
from teacher.core.tasks import (
    BBH_COT_FEWSHOT_METRIC,
    BBH_SUBTASKS,
    INVALID,
    Example,
    bbh_cot_fewshot_get_answer,
    exact_match,
    get_task,
)

BBH_ANY = "boolean_expressions"  # any subtask: they share the 3-shot template


@dataclass
class BbhSettings:
    subtasks: list[str] = field(default_factory=lambda: ["all"])
    limit: int | None = 10  # items per subtask
    max_new_tokens: int = 256  # lm-eval allows 1024; the stop strings end most answers


def bbh_subtasks(subtasks: list[str] | None, where: str = "bbh.subtasks",
                 error: type[Exception] = UnknownMetricError) -> list[str]:
    """The subtasks a setting (``where``) names (``[all]``: every one); an unknown name
    raises ``error`` naming the setting."""
    names = list(subtasks or ["all"])
    if names == ["all"]:
        return list(BBH_SUBTASKS)
    for name in names:
        if name not in BBH_SUBTASKS:
            raise error(f"{where}: unknown BBH subtask {name!r}"
                        f"{did_you_mean(name, BBH_SUBTASKS)}")
    return names


def score_bbh(output: str, example: Example) -> dict[str, Any]:
    """lm-eval bbh_cot_fewshot: "get-answer" filter, then plain exact_match."""
    got = bbh_cot_fewshot_get_answer(output)
    hit = got != INVALID and exact_match(got, example.target, **BBH_COT_FEWSHOT_METRIC)
    return {"answer": got, "target": example.target, "exact_match": float(hit)}


ALL = Measure("bbh/exact_match", True, "mean", "exact_match",
              description="lm-eval bbh cot_fewshot exact match, all items", exact=True)


@register_metric
class Bbh(Metric):
    name = "bbh"
    group = "forgetting"
    description = "BIG-Bench-Hard 3-shot CoT exact match"
    settings_type = BbhSettings
    settings: BbhSettings

    def validate(self) -> None:
        bbh_subtasks(self.settings.subtasks)
        check_limit("bbh.limit", self.settings.limit)

    def load(self, run: Any, data_dir: Path | None) -> list[tuple[str, Example]]:
        return [(sub, ex) for sub in bbh_subtasks(self.settings.subtasks)
                for ex in get_task(f"bbh/{sub}").load("test", data_dir, self.settings.limit)]

    def data_fingerprint(self, data: list[tuple[str, Example]]) -> Any:
        return examples_fingerprint([ex for _, ex in data])

    def count(self, data: list[tuple[str, Example]]) -> int:
        return len(data)

    async def compute(self, model: Any, data: list[tuple[str, Example]], *,
                      data_dir: Path | None, progress: Any = None) -> list[Row]:
        tpl = get_task("bbh/" + BBH_ANY).default_template
        assert tpl is not None
        prompts = [get_task(f"bbh/{sub}").prompt(ex, data_dir=data_dir) for sub, ex in data]
        max_new = min(self.settings.max_new_tokens, tpl.max_new_tokens or 1 << 30)
        outputs = await model.generate(prompts, max_new, tpl.stop, progress)
        return [{"id": ex.id, "subtask": sub, "output": out, **score_bbh(out, ex)}
                for (sub, ex), out in zip(data, outputs, strict=True)]

    def measures(self) -> list[Measure]:
        return [ALL] + [
            Measure(f"bbh/{s}/exact_match", True, "mean", "exact_match", (("subtask", s),),
                    exact=True)
            for s in bbh_subtasks(self.settings.subtasks)
        ]

    def summary(self) -> list[SummaryTerm]:
        return [SummaryTerm((FORGETTING, "bbh"), ALL, "accuracy points lost",
                            lambda x, y: 100 * (y - x))]
