"""The metric registry: what ``distill-eval`` can measure and how each number is made.

Modelled on lm-evaluation-harness: a *metric* (the name a suite lists, e.g.
``gsm8k``) produces per-item score rows, and declares the *measures* reported from
them, each with a name, ``higher_is_better`` and an aggregation over the rows.
Per-item scoring (the ``score_*`` functions here, and :mod:`eval.memorization`,
:mod:`eval.perplexity`) is kept apart from aggregation (:data:`AGGREGATIONS`), so
the bootstrap (:mod:`eval.stats`) can re-aggregate resampled items.

Metrics and their measures:

* ``gsm8k`` (target): ``strict_match`` / ``flexible_extract`` accuracy, lm-eval's
  filters and exact_match settings for the prompt format used;
* ``bbh`` (forgetting): ``exact_match`` over all items (lm-eval's group
  aggregate, weighted by size) and per subtask, lm-eval bbh cot_fewshot rules;
* ``wikitext`` (forgetting): ``word_perplexity``, ``byte_perplexity``,
  ``bits_per_byte``;
* ``memorization``: per setting and split, exact match, ROUGE-L share above the
  threshold, mean ROUGE-L and mean longest common run;
* ``reference_ppl`` (over-memorization, Ruan et al. 2025): token perplexity of the
  gsm8k test references (beside accuracy, per checkpoint);
* ``train_ppl``: token perplexity of the run's training responses under the base
  model (how surprising the training data was);
* ``fit``: final train loss, validation loss and their gap (from the run's loss
  history; no model needed).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eval.memorization import SETTINGS
from eval.perplexity import bits_per_byte, weighted_perplexity
from teacher.core.tasks import (
    BBH_COT_FEWSHOT_METRIC,
    BBH_SUBTASKS,
    GSM8K_METRIC,
    INVALID,
    Example,
    bbh_cot_fewshot_get_answer,
    exact_match,
    gsm8k_cot_strict_match,
    gsm8k_flexible_extract,
    gsm8k_strict_match,
)
from teacher.core.templates import Template

Item = Mapping[str, Any]
Aggregation = Callable[[Sequence[Item]], float]

GROUPS = ("target", "forgetting", "memorization", "over_memorization", "train_data", "fit")


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

    def select(self, items: Sequence[Item]) -> list[Item]:
        return [it for it in items if all(it.get(k) == v for k, v in self.where)]

    def aggregate_fn(self) -> Aggregation:
        return AGGREGATIONS[self.aggregation](self.field)


@dataclass(frozen=True)
class MetricDef:
    """A metric a suite can list: its group, measures and what it needs to run."""

    name: str
    group: str
    description: str
    needs_model: bool = True
    needs_run_dir: bool = False  # reads the run's training data or loss history
    base_only: bool = False  # computed on the base model only
    measures: Callable[[Mapping[str, Any]], list[Measure]] = field(default=lambda cfg: [])


def _gsm8k_measures(cfg: Mapping[str, Any]) -> list[Measure]:
    return [
        Measure("gsm8k/strict_match", True, "mean", "strict_match",
                description="lm-eval gsm8k strict-match accuracy"),
        Measure("gsm8k/flexible_extract", True, "mean", "flexible_extract",
                description="lm-eval gsm8k flexible-extract accuracy"),
    ]


def bbh_subtasks(cfg: Mapping[str, Any]) -> list[str]:
    names = list(cfg.get("subtasks") or ["all"])
    if names == ["all"]:
        return list(BBH_SUBTASKS)
    for name in names:
        if name not in BBH_SUBTASKS:
            close = difflib.get_close_matches(name, BBH_SUBTASKS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownMetricError(f"bbh.subtasks: unknown BBH subtask {name!r}{hint}")
    return names


def _bbh_measures(cfg: Mapping[str, Any]) -> list[Measure]:
    out = [Measure("bbh/exact_match", True, "mean", "exact_match",
                   description="lm-eval bbh cot_fewshot exact match, all items")]
    out += [
        Measure(f"bbh/{s}/exact_match", True, "mean", "exact_match", (("subtask", s),))
        for s in bbh_subtasks(cfg)
    ]
    return out


def _wikitext_measures(cfg: Mapping[str, Any]) -> list[Measure]:
    return [
        Measure("wikitext/word_perplexity", False, "weighted_perplexity", "words"),
        Measure("wikitext/byte_perplexity", False, "weighted_perplexity", "bytes"),
        Measure("wikitext/bits_per_byte", False, "bits_per_byte", "bytes"),
    ]


def _memorization_measures(cfg: Mapping[str, Any]) -> list[Measure]:
    out = []
    for setting in cfg.get("settings") or SETTINGS:
        for split in ("train", "control"):
            where = (("setting", setting), ("split", split))
            prefix = f"memorization/{setting}/{split}"
            out += [
                Measure(f"{prefix}/exact_match", False, "mean", "exact_match", where),
                Measure(f"{prefix}/rouge_l_above", False, "mean", "rouge_l_above", where),
                Measure(f"{prefix}/rouge_l", False, "mean", "rouge_l", where),
                Measure(f"{prefix}/lcs_run", False, "mean", "lcs_run", where),
            ]
    return out


def _ppl_measure(name: str) -> Callable[[Mapping[str, Any]], list[Measure]]:
    return lambda cfg: [Measure(name, False, "weighted_perplexity", "tokens")]


METRICS: dict[str, MetricDef] = {
    m.name: m
    for m in (
        MetricDef("gsm8k", "target", "GSM8K test accuracy, greedy CoT", measures=_gsm8k_measures),
        MetricDef("bbh", "forgetting", "BIG-Bench-Hard 3-shot CoT exact match",
                  measures=_bbh_measures),
        MetricDef("wikitext", "forgetting", "WikiText-2 rolling-window perplexity",
                  measures=_wikitext_measures),
        MetricDef("memorization", "memorization", "Zeng et al. 2023 copy rates of trained "
                  "responses vs held-out controls", needs_run_dir=True,
                  measures=_memorization_measures),
        MetricDef("reference_ppl", "over_memorization", "perplexity of the gsm8k test "
                  "references (Ruan et al. 2025), per checkpoint too",
                  measures=_ppl_measure("reference_ppl/gsm8k")),
        MetricDef("train_ppl", "train_data", "perplexity of the run's training responses "
                  "under the base model", needs_run_dir=True, base_only=True,
                  measures=_ppl_measure("train_ppl")),
        MetricDef("fit", "fit", "final train loss, validation loss and their gap",
                  needs_model=False, needs_run_dir=True),
    )
}


def get_metric(name: str) -> MetricDef:
    """The metric called ``name``; unknown names raise with suggestions."""
    try:
        return METRICS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(METRICS), n=2)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownMetricError(
            f"unknown metric {name!r}{hint} (known: {', '.join(METRICS)})"
        ) from None


# ----------------------------------------------------------------------------- per-item scoring


def gsm8k_filters(template: Template) -> tuple[Callable[[str], str], Callable[[str], str]]:
    """(strict, flexible) lm-eval filters for a gsm8k prompt format: ``gsm8k_cot``'s
    "The answer is N." for the 8-shot CoT prompt, ``gsm8k``'s "#### N" otherwise
    (the zero-shot prompt asks for that line)."""
    strict = gsm8k_cot_strict_match if template.num_fewshot else gsm8k_strict_match
    return strict, gsm8k_flexible_extract


def gsm8k_target(example: Example) -> str:
    """lm-eval gsm8k_cot doc_to_target: the text after the last ``####``, stripped."""
    return example.answer.split("####")[-1].strip()


def score_gsm8k(output: str, example: Example, template: Template) -> dict[str, Any]:
    strict, flexible = gsm8k_filters(template)
    target = gsm8k_target(example)
    got_strict, got_flexible = strict(output), flexible(output)
    return {
        "answer_strict": got_strict,
        "answer_flexible": got_flexible,
        "target": target,
        "strict_match": float(exact_match(got_strict, target, **GSM8K_METRIC)),
        "flexible_extract": float(exact_match(got_flexible, target, **GSM8K_METRIC)),
    }


def score_bbh(output: str, example: Example) -> dict[str, Any]:
    """lm-eval bbh_cot_fewshot: "get-answer" filter, then plain exact_match."""
    got = bbh_cot_fewshot_get_answer(output)
    hit = got != INVALID and exact_match(got, example.target, **BBH_COT_FEWSHOT_METRIC)
    return {"answer": got, "target": example.target, "exact_match": float(hit)}


def fit_values(history: Mapping[str, Any]) -> dict[str, float | None]:
    """Final train loss, final validation loss and their gap (val - train)."""
    train = [e["loss"] for e in history.get("train", []) if e.get("loss") is not None]
    val = [e["loss"] for e in history.get("eval", []) if e.get("loss") is not None]
    final_train = float(train[-1]) if train else None
    final_val = float(val[-1]) if val else None
    gap = final_val - final_train if final_train is not None and final_val is not None else None
    return {"train_loss": final_train, "val_loss": final_val, "gap": gap}
