"""``gsm8k`` (target): GSM8K test accuracy, greedy CoT, with lm-eval's filters.

``flexible_extract`` accuracy (the headline: the answer wherever the model put it)
and ``strict_match`` (the format measure: the answer in the form the prompt asked
for), with lm-eval's filters and exact_match settings for the prompt format used:
``gsm8k_cot``'s "The answer is N." for the 8-shot CoT prompt, the last
``\\boxed{N}`` (flexible: the last number in it, else in the text) for the
boxed prompt the suites use, ``gsm8k``'s "#### N" for the zero-shot training
prompt. ``truncated``: the share of answers cut off at ``max_new_tokens``.
Also computed on each evaluated checkpoint, beside ``reference_ppl``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.metrics.base import (
    TARGET_GAIN,
    Measure,
    Row,
    SummaryTerm,
    TaskMetric,
    check_limit,
    register_metric,
)
from teacher.core.config import ConfigError
from teacher.core.tasks import (
    GSM8K_METRIC,
    Example,
    exact_match,
    get_task,
    gsm8k_boxed_flexible_extract,
    gsm8k_boxed_strict_match,
    gsm8k_cot_strict_match,
    gsm8k_flexible_extract,
    gsm8k_strict_match,
)
from teacher.core.tasks.gsm8k import GSM8K_COT_BOXED
from teacher.core.templates import Template, get_template


@dataclass
class Gsm8kSettings:
    split: str = "test"
    limit: int | None = 50
    # The prompt the instruct model follows (Qwen's "reason step by step ... \\boxed{}");
    # "gsm8k-cot-zeroshot" is the student's training format ("#### N" answer line),
    # "gsm8k-cot-8shot" lm-eval's gsm8k_cot prompt (both cross-checked against lm-eval).
    template: str = GSM8K_COT_BOXED.id
    # Its answers run to ~450 tokens (docs/eval-crosscheck.md); gsm8k/truncated shows cut-offs.
    max_new_tokens: int = 512


def gsm8k_template(key: str, name: str) -> Template:
    """The gsm8k prompt template ``name`` (the suite key ``key`` names it in errors)."""
    try:
        template = get_template(name)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    if template.task != "gsm8k":
        raise ConfigError(f"{key}: template {name!r} is for {template.task}, not gsm8k")
    return template


def gsm8k_filters(template: Template) -> tuple[Callable[[str], str], Callable[[str], str]]:
    """(strict, flexible) filters for a gsm8k prompt format: the boxed answer for the
    boxed prompt; ``gsm8k_cot``'s "The answer is N." for the 8-shot CoT prompt,
    ``gsm8k``'s "#### N" otherwise (the zero-shot prompt asks for that line), each
    with lm-eval's flexible-extract (the last number)."""
    if template.id == GSM8K_COT_BOXED.id:
        return gsm8k_boxed_strict_match, gsm8k_boxed_flexible_extract
    strict = gsm8k_cot_strict_match if template.num_fewshot else gsm8k_strict_match
    return strict, gsm8k_flexible_extract


def gsm8k_target(example: Example) -> str:
    """lm-eval gsm8k_cot doc_to_target: the text after the last ``####``, stripped.

    Not ``example.target``: that is the number in canonical form ("1,200" -> "1200"),
    while lm-eval compares against the text as written (the comma is ignored by the
    metric either way, but the rows record the target as lm-eval sees it)."""
    return example.answer.split("####")[-1].strip()


def score_gsm8k(output: str, example: Example, template: Template,
                stop_reason: str = "") -> dict[str, Any]:
    """One item's row; ``stop_reason`` the service's (``"max_tokens"``: cut off)."""
    strict, flexible = gsm8k_filters(template)
    target = gsm8k_target(example)
    got_strict, got_flexible = strict(output), flexible(output)
    return {
        "answer_strict": got_strict,
        "answer_flexible": got_flexible,
        "target": target,
        "strict_match": float(exact_match(got_strict, target, **GSM8K_METRIC)),
        "flexible_extract": float(exact_match(got_flexible, target, **GSM8K_METRIC)),
        "stop_reason": stop_reason,
        "truncated": float(stop_reason == "max_tokens"),
    }


STRICT = Measure("gsm8k/strict_match", True, "mean", "strict_match",
                 description="strict-match accuracy: the answer in the prompt's format",
                 exact=True)
FLEXIBLE = Measure("gsm8k/flexible_extract", True, "mean", "flexible_extract",
                   description="flexible-extract accuracy (the headline): the last "
                               "(boxed) number", exact=True)
TRUNCATED = Measure("gsm8k/truncated", False, "mean", "truncated",
                    description="share of answers cut off at max_new_tokens", exact=True)


@register_metric
class Gsm8k(TaskMetric):
    name = "gsm8k"
    group = "target"
    description = "GSM8K test accuracy, greedy CoT"
    settings_type = Gsm8kSettings
    on_checkpoints = True
    settings: Gsm8kSettings

    def validate(self) -> None:
        gsm8k_template("gsm8k.template", self.settings.template)
        check_limit("gsm8k.limit", self.settings.limit)

    def load(self, run: Any, data_dir: Path | None) -> list[Example]:
        return get_task("gsm8k").load(self.settings.split, data_dir, self.settings.limit)

    async def compute(self, model: Any, data: list[Example], *, data_dir: Path | None,
                      progress: Any = None) -> list[Row]:
        task, tpl = get_task("gsm8k"), get_template(self.settings.template)
        prompts = [task.prompt(ex, tpl, data_dir=data_dir) for ex in data]
        max_new = min(self.settings.max_new_tokens, tpl.max_new_tokens or 1 << 30)
        outputs = await model.generate_stopped(prompts, max_new, tpl.stop, progress)
        return [{"id": ex.id, "output": out, **score_gsm8k(out, ex, tpl, reason)}
                for ex, (out, reason) in zip(data, outputs, strict=True)]

    def measures(self) -> list[Measure]:
        return [FLEXIBLE, STRICT, TRUNCATED]

    def headline(self) -> Measure:
        return FLEXIBLE

    def summary(self) -> list[SummaryTerm]:
        return [SummaryTerm((TARGET_GAIN,), FLEXIBLE, "accuracy points",
                            lambda x, y: 100 * (x - y))]
