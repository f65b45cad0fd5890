"""``bbh_mc`` (forgetting): BIG-Bench-Hard accuracy by log-likelihood of the options.

lm-eval's ``multiple_choice`` output type (``ConfigurableTask.process_results`` in
lm_eval/api/task.py), as its ``leaderboard_bbh_<subtask>`` tasks use it
(lm_eval/tasks/leaderboard/bbh_mc/): each option is scored as the continuation of the
prompt, ``acc`` is 1 when the option of highest summed log-probability is the target,
``acc_norm`` when the option of highest log-probability per character (``len(option)``)
is. One forward pass per option, no generation: far cheaper than CoT ``bbh``, so a
suite can afford hundreds of items.

* Prompt: lm-eval's ``bbh_zeroshot`` (the subtask description, then ``Q: {input}\\nA:``;
  template ``bbh-zeroshot``); each option follows as ``" " + option`` (lm-eval's default
  ``target_delimiter``).
* Options, per item: the labels of the question's ``(A) ...`` lines for the letter
  subtasks; the answer words for the six subtasks whose targets are words
  (:data:`WORD_OPTIONS`, the choices of lm-eval's leaderboard YAML, checked against the
  data by the tests).
* Skipped: the four free-form subtasks (:data:`FREE_FORM`: no fixed option set; CoT
  ``bbh`` scores them by generation), named in the all-items measure's description.
  Also dropped, as data errors: items with fewer than two options or whose target is not
  among them (``movie_recommendation`` 163, ``ruin_names`` 99 and 144 have options split at
  commas, ``snarks`` 88 is truncated to one option); lm-eval scores those 0 forever.

Rows: one per item, ``acc`` / ``acc_norm`` 0/1 with the options' log-likelihoods, keyed
by the task's ``Example.id`` (stable, so runs pair item by item). The accuracies'
intervals are exact (Clopper–Pearson).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.metrics.base import (
    FORGETTING,
    Measure,
    Row,
    SummaryTerm,
    TaskMetric,
    check_limit,
    examples_fingerprint,
    register_metric,
)
from teacher.core.config import ConfigError, did_you_mean
from teacher.core.tasks import BBH_SUBTASKS, Example, get_task
from teacher.core.templates import get_template

# Targets that are free text (counts, numbers, bracket strings, word lists): no option set.
FREE_FORM: tuple[str, ...] = ("dyck_languages", "multistep_arithmetic_two", "object_counting",
                              "word_sorting")
# The subtasks whose answers are words, with lm-eval's leaderboard_bbh doc_to_choice order
# (argmax ties go to the first).
WORD_OPTIONS: dict[str, tuple[str, ...]] = {
    "boolean_expressions": ("False", "True"),
    "causal_judgement": ("Yes", "No"),
    "formal_fallacies": ("valid", "invalid"),
    "navigate": ("Yes", "No"),
    "sports_understanding": ("yes", "no"),
    "web_of_lies": ("Yes", "No"),
}
# Every other subtask lists lettered options, one per line.
MULTIPLE_CHOICE: tuple[str, ...] = tuple(s for s in BBH_SUBTASKS if s not in FREE_FORM)
TEMPLATES = ("bbh-zeroshot",)
TARGET_DELIMITER = " "  # lm-eval's default, between the prompt and each option
_OPTION_LINE = re.compile(r"^(\([A-Z]\)) ", re.MULTILINE)
_PAIRS_PER_CALL = 64  # options scored per service call: the progress bar's step


def item_options(subtask: str, example: Example) -> list[str]:
    """The answers ``example`` can be given: its question's option labels
    (``["(A)", "(B)", ...]``) or the subtask's answer words."""
    if subtask in WORD_OPTIONS:
        return list(WORD_OPTIONS[subtask])
    if subtask in FREE_FORM:
        raise ValueError(f"BBH subtask {subtask!r} is free-form: it has no option set")
    return list(dict.fromkeys(_OPTION_LINE.findall(example.question)))


def scorable(subtask: str, example: Example) -> bool:
    """Whether the item is a well-formed multiple-choice question: at least two
    options, the target among them."""
    options = item_options(subtask, example)
    return len(options) >= 2 and example.target in options


def choose(loglikelihoods: Sequence[float], options: Sequence[str]) -> tuple[int, int]:
    """lm-eval multiple_choice: ``(argmax ll, argmax ll / len(option))``, the first
    option on ties (numpy's argmax)."""
    if not options or len(loglikelihoods) != len(options):
        raise ValueError(f"{len(loglikelihoods)} log-likelihoods for {len(options)} options")
    lls = [float(x) for x in loglikelihoods]
    norm = [ll / len(opt) for ll, opt in zip(lls, options, strict=True)]
    return lls.index(max(lls)), norm.index(max(norm))


def mc_subtasks(subtasks: list[str] | None) -> list[str]:
    """The subtasks a ``bbh_mc.subtasks`` setting names (``[all]``: every multiple-choice one)."""
    names = list(subtasks or ["all"])
    if names == ["all"]:
        return list(MULTIPLE_CHOICE)
    for name in names:
        if name in FREE_FORM:
            raise ConfigError(f"bbh_mc.subtasks: {name!r} is free-form (no option set to "
                              "score); the bbh metric scores it by generation")
        if name not in MULTIPLE_CHOICE:
            raise ConfigError(f"bbh_mc.subtasks: unknown BBH subtask {name!r}"
                              f"{did_you_mean(name, MULTIPLE_CHOICE)}")
    return names


@dataclass
class BbhMcSettings:
    subtasks: list[str] = field(default_factory=lambda: ["all"])  # all: the 23 MC subtasks
    limit: int | None = 10  # well-formed items per subtask, in file order; null: all
    template: str = "bbh-zeroshot"


def _accuracy(key: str, subtask: str | None, description: str = "") -> Measure:
    name = f"bbh_mc/{key}" if subtask is None else f"bbh_mc/{subtask}/{key}"
    where = () if subtask is None else (("subtask", subtask),)
    return Measure(name, True, "mean", key, where, description, exact=True)


def _skipped(subtasks: Sequence[str]) -> str:
    left = [s for s in BBH_SUBTASKS if s not in subtasks]
    free = [s for s in left if s in FREE_FORM]
    other = [s for s in left if s not in FREE_FORM]
    parts = [f"free-form subtasks skipped: {', '.join(free)}"] if free else []
    if other:
        parts.append(f"not selected: {', '.join(other)}")
    return "; ".join(parts)


@register_metric
class BbhMc(TaskMetric):
    name = "bbh_mc"
    group = "forgetting"
    description = ("BIG-Bench-Hard zero-shot accuracy by option log-likelihood "
                   "(lm-eval multiple_choice), the multiple-choice subtasks")
    settings_type = BbhMcSettings
    settings: BbhMcSettings

    def validate(self) -> None:
        mc_subtasks(self.settings.subtasks)
        check_limit("bbh_mc.limit", self.settings.limit)
        if self.settings.template not in TEMPLATES:
            raise ConfigError(f"bbh_mc.template: {self.settings.template!r} is not an "
                              f"answer-only BBH template ({', '.join(TEMPLATES)})"
                              f"{did_you_mean(self.settings.template, TEMPLATES)}")

    def load(self, run: Any, data_dir: Path | None) -> list[tuple[str, Example]]:
        out = []
        for sub in mc_subtasks(self.settings.subtasks):
            items = [ex for ex in get_task(f"bbh/{sub}").load("test", data_dir)
                     if scorable(sub, ex)]
            out += [(sub, ex) for ex in items[: self.settings.limit]]
        return out

    def data_fingerprint(self, data: list[tuple[str, Example]]) -> Any:
        return examples_fingerprint([ex for _, ex in data])

    async def compute(self, model: Any, data: list[tuple[str, Example]], *,
                      data_dir: Path | None, progress: Any = None) -> list[Row]:
        tpl = get_template(self.settings.template)
        prompts = [get_task(f"bbh/{sub}").prompt(ex, tpl, data_dir=data_dir) for sub, ex in data]
        options = [item_options(sub, ex) for sub, ex in data]
        # Items in order of prompt length, so a batch's rows pad to similar widths.
        order = sorted(range(len(data)), key=lambda i: len(prompts[i]))
        lls: dict[int, list[float]] = {}
        start = 0
        while start < len(order):
            part, pairs = [], 0
            while start < len(order) and (not part or pairs + len(options[order[start]])
                                          <= _PAIRS_PER_CALL):
                part.append(order[start])
                pairs += len(options[order[start]])
                start += 1
            scores = await model.score([(prompts[i], TARGET_DELIMITER + opt)
                                        for i in part for opt in options[i]])
            for i in part:
                lls[i] = [-nll for nll, _ in scores[: len(options[i])]]
                scores = scores[len(options[i]):]
            if progress is not None:
                progress.update(len(part))
        rows = []
        for i, (sub, ex) in enumerate(data):
            pred, pred_norm = choose(lls[i], options[i])
            gold = options[i].index(ex.target)
            rows.append({"id": ex.id, "subtask": sub, "target": ex.target,
                         "options": options[i], "loglikelihoods": lls[i],
                         "answer": options[i][pred], "answer_norm": options[i][pred_norm],
                         "acc": float(pred == gold), "acc_norm": float(pred_norm == gold),
                         "chance": 1.0 / len(options[i])})
        return rows

    def measures(self) -> list[Measure]:
        subtasks = mc_subtasks(self.settings.subtasks)
        skipped = _skipped(subtasks)
        scope = f"{len(subtasks)} multiple-choice subtasks" + (f" ({skipped})" if skipped else "")
        return [
            _accuracy("acc", None, f"lm-eval multiple_choice acc (argmax option "
                      f"log-likelihood), all items of the {scope}"),
            _accuracy("acc_norm", None, "acc_norm (argmax log-likelihood per character)"),
            *[_accuracy("acc", s) for s in subtasks],
        ]

    def summary(self) -> list[SummaryTerm]:
        return [SummaryTerm((FORGETTING, "bbh_mc"), self.measures()[0], "accuracy points lost",
                            lambda x, y: 100 * (y - x))]

