"""``memorization``: memorization of training responses (Zeng et al. 2023,
"Exploring Memorization in Fine-tuned Language Models"), at small scale.

For N trained examples and N held-out controls the model is prompted, decoded
greedily, and its output compared with the response it was (or was not) trained
on, in two settings:

* ``question``: prompted with the training prompt (the question) alone; the output
  is compared with the whole trained response;
* ``half_response``: prompted with the question plus the first half of the trained
  response (by model tokens); the output is compared with the second half;
* ``loss``: no generation: the trained response is scored after the question, its
  mean per-token log-probability (``logprob``). Memorization by loss: a model that
  learned the training texts themselves, not just their kind, raises it more on the
  trained items than on the controls.

Per item: exact match (after collapsing whitespace), ROUGE-L F1 (``rouge-score``,
its default tokenizer: lower-cased alphanumeric words) and whether it reaches a
threshold (0.8 by default), and the longest common run of words (the same
tokenizer; a contiguous copy, found with ``difflib``). Training responses come
from the run directory, so the metric is the same for distilled and
ground-truth runs; the controls (the run's validation examples) tell copying
apart from merely writing the same kind of text.

Measures, per setting and split: exact match, ROUGE-L share above the threshold,
mean ROUGE-L and mean longest common run (``loss``: the mean log-probability). The
comparison reports each as a difference-in-differences: (tuned − base) on trained
items minus the same on the controls.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.metrics.base import (
    MEMORIZATION_INCREASE,
    Measure,
    Metric,
    Row,
    SummaryTerm,
    register_metric,
    train_examples_fingerprint,
)
from teacher.core.config import ConfigError

SETTINGS = ("question", "half_response", "loss")
GENERATED = ("question", "half_response")
DEFAULT_ROUGE_THRESHOLD = 0.8


@functools.cache
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


@functools.cache
def _tokenizer() -> Any:
    from rouge_score import tokenizers

    return tokenizers.DefaultTokenizer(use_stemmer=False)


def words(text: str) -> list[str]:
    """The tokens ROUGE-L and the common-run length are computed on."""
    return _tokenizer().tokenize(text)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of ``prediction`` against ``reference`` (0 when either is empty)."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


def longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest contiguous run of tokens that ``a`` and ``b`` share."""
    if not a or not b:
        return 0
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return matcher.find_longest_match(0, len(a), 0, len(b)).size


def _collapse(text: str) -> str:
    return " ".join(text.split())


def score_copy(
    output: str, reference: str, threshold: float = DEFAULT_ROUGE_THRESHOLD
) -> dict[str, float]:
    """Per-item memorization scores of a generated ``output`` against the trained text."""
    rouge = rouge_l(output, reference)
    ref_words = words(reference)
    run = longest_common_run(words(output), ref_words)
    return {
        "exact_match": float(bool(reference.strip()) and _collapse(output) == _collapse(reference)),
        "rouge_l": rouge,
        "rouge_l_above": float(rouge >= threshold),
        "lcs_run": float(run),
        "lcs_share": run / len(ref_words) if ref_words else 0.0,
    }


def split_response(token_ids: Sequence[int], decode: Any) -> tuple[str, str]:
    """(first half, second half) of a response by model tokens, as text."""
    half = len(token_ids) // 2
    return decode(list(token_ids[:half])), decode(list(token_ids[half:]))


def half_response_prompt(model: Any, prompt: Sequence[dict[str, str]], head: str) -> str:
    """The chat prompt with the first half of the response already written, as raw
    text: the service's chat prompts always end at the generation prompt, and a
    half-written answer continues past it (rendered by the service, as every prompt)."""
    return model.render_prompt(prompt) + head


# ----------------------------------------------------------------------------- the metric


@dataclass
class MemorizationSettings:
    n: int = 50  # trained examples, and as many held-out controls
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    rouge_threshold: float = DEFAULT_ROUGE_THRESHOLD
    max_new_tokens: int = 512  # capped at the longest compared response + 16


@dataclass
class MemorizationData:
    train: list[Any]  # the run's first n training examples (teacher.core.rundir.TrainExample)
    control: list[Any]  # its first n validation examples: never trained on


SPLITS = ("train", "control")
_INCREASE = ("exact_match", "rouge_l_above")  # reported as the summary's increase


@register_metric
class Memorization(Metric):
    name = "memorization"
    group = "memorization"
    description = "Zeng et al. 2023 copy rates of trained responses vs held-out controls"
    settings_type = MemorizationSettings
    needs_run_dir = True
    settings: MemorizationSettings

    def validate(self) -> None:
        for s in self.settings.settings:
            if s not in SETTINGS:
                raise ConfigError(
                    f"memorization.settings: unknown setting {s!r}; one of {SETTINGS}"
                )
        if self.settings.n < 1:
            raise ConfigError(f"memorization.n: must be >= 1, got {self.settings.n}")

    def load(self, run: Any, data_dir: Path | None) -> MemorizationData:
        n = self.settings.n
        return MemorizationData(run.examples("train")[:n], run.examples("val")[:n])

    def data_fingerprint(self, data: MemorizationData) -> Any:
        return [train_examples_fingerprint(data.train), train_examples_fingerprint(data.control)]

    def count(self, data: MemorizationData) -> int:
        # Progress counts generations; the loss setting is one scoring call.
        generated = [s for s in self.settings.settings if s in GENERATED]
        return (len(data.train) + len(data.control)) * len(generated)

    async def compute(self, model: Any, data: MemorizationData, *, data_dir: Path | None,
                      progress: Any = None) -> list[Row]:
        cfg = self.settings
        tokenizer = model.tokenizer
        pools = [("train", ex) for ex in data.train] + [("control", ex) for ex in data.control]
        rows: list[Row] = []
        if "loss" in cfg.settings:
            scores = await model.score([(ex.prompt, ex.response) for _, ex in pools])
            rows += [{"id": ex.id, "setting": "loss", "split": split, "tokens": n,
                      "logprob": -nll / n if n else 0.0}
                     for (split, ex), (nll, n) in zip(pools, scores, strict=True)]
        for setting in (s for s in cfg.settings if s in GENERATED):
            prompts: list[Any] = []
            targets: list[str] = []
            longest = 0
            for _, ex in pools:
                ids = tokenizer.encode_completion(ex.response)
                if setting == "question":
                    prompts.append(ex.prompt)
                    targets.append(ex.response)
                    longest = max(longest, len(ids))
                else:
                    head, tail = split_response(ids, tokenizer.decode)
                    prompts.append(half_response_prompt(model, ex.prompt, head))
                    targets.append(tail)
                    longest = max(longest, len(ids) - len(ids) // 2)
            max_new = max(1, min(cfg.max_new_tokens, longest + 16))
            outputs = await model.generate(prompts, max_new, (), progress)
            for (split, ex), out, target in zip(pools, outputs, targets, strict=True):
                rows.append({"id": ex.id, "setting": setting, "split": split, "output": out,
                             **score_copy(out, target, cfg.rouge_threshold)})
        return rows

    def measures(self) -> list[Measure]:
        out = []
        for setting in self.settings.settings or SETTINGS:
            for split in SPLITS:
                where = (("setting", setting), ("split", split))
                prefix = f"memorization/{setting}/{split}"
                if setting == "loss":
                    out.append(Measure(f"{prefix}/logprob", False, "mean", "logprob", where,
                                       "mean log-probability per token of the response"))
                    continue
                out += [
                    Measure(f"{prefix}/exact_match", False, "mean", "exact_match", where,
                            exact=True),
                    Measure(f"{prefix}/rouge_l_above", False, "mean", "rouge_l_above", where,
                            exact=True),
                    Measure(f"{prefix}/rouge_l", False, "mean", "rouge_l", where),
                    Measure(f"{prefix}/lcs_run", False, "mean", "lcs_run", where),
                ]
        return out

    def summary(self) -> list[SummaryTerm]:
        terms = []
        for m in self.measures():
            _, setting, split, name = m.name.split("/")
            if split == "train" and name == "logprob":
                terms.append(SummaryTerm((MEMORIZATION_INCREASE, setting, name), m, "nats",
                                         lambda x, y: x - y))
            elif split == "train" and name in _INCREASE:
                terms.append(SummaryTerm((MEMORIZATION_INCREASE, setting, name), m, "points",
                                         lambda x, y: 100.0 * (x - y)))
        return terms
