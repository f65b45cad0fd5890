"""``wikitext`` (forgetting): WikiText-2 rolling-window perplexity, as lm-eval computes it.

``word_perplexity``, ``byte_perplexity`` and ``bits_per_byte`` over the corpus
(:mod:`eval.perplexity`): documents cut into disjoint windows of ``max_length``
tokens, scored by token ids; words and bytes counted on the original page.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.metrics.base import (
    FORGETTING,
    Measure,
    Row,
    SummaryTerm,
    TaskMetric,
    check_limit,
    register_metric,
)
from eval.perplexity import document_loglikelihoods
from teacher.core.tasks import Example, get_task, wikitext_units


@dataclass
class WikitextSettings:
    split: str = "test"
    limit: int | None = None  # documents (62 in the test split)
    max_length: int = 2048  # rolling-window length (lm-eval: the model's max length)


BITS_PER_BYTE = Measure("wikitext/bits_per_byte", False, "bits_per_byte", "bytes")


@register_metric
class Wikitext(TaskMetric):
    name = "wikitext"
    group = "forgetting"
    description = "WikiText-2 rolling-window perplexity"
    settings_type = WikitextSettings
    settings: WikitextSettings

    def validate(self) -> None:
        check_limit("wikitext.limit", self.settings.limit)

    def min_context(self) -> int:
        return self.settings.max_length + 1  # a window plus its one context token

    def load(self, run: Any, data_dir: Path | None) -> list[Example]:
        return get_task("wikitext-2").load(self.settings.split, data_dir, self.settings.limit)

    async def compute(self, model: Any, data: list[Example], *, data_dir: Path | None,
                      progress: Any = None) -> list[Row]:
        lls = await document_loglikelihoods(model, [ex.answer for ex in data],
                                            self.settings.max_length)
        rows = []
        for ex, (ll, tokens) in zip(data, lls, strict=True):
            words, num_bytes = wikitext_units(ex.raw)
            rows.append({"id": ex.id, "loglikelihood": ll, "tokens": tokens,
                         "words": words, "bytes": num_bytes})
            if progress is not None:
                progress.update(1)
        return rows

    def measures(self) -> list[Measure]:
        return [
            Measure("wikitext/word_perplexity", False, "weighted_perplexity", "words"),
            Measure("wikitext/byte_perplexity", False, "weighted_perplexity", "bytes"),
            BITS_PER_BYTE,
        ]

    def summary(self) -> list[SummaryTerm]:
        return [SummaryTerm((FORGETTING, "wikitext"), BITS_PER_BYTE, "% more bits per byte",
                            lambda x, y: 100 * (x - y) / y)]
