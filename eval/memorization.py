"""Memorization of training responses (Zeng et al. 2023, "Exploring Memorization in
Fine-tuned Language Models"), at small scale.

For N trained examples and N held-out controls the model is prompted, decoded
greedily, and its output compared with the response it was (or was not) trained
on, in two settings:

* ``question``: prompted with the training prompt (the question) alone; the output
  is compared with the whole trained response;
* ``half_response``: prompted with the question plus the first half of the trained
  response (by model tokens); the output is compared with the second half.

Per item: exact match (after collapsing whitespace), ROUGE-L F1 (``rouge-score``,
its default tokenizer: lower-cased alphanumeric words) and whether it reaches a
threshold (0.8 by default), and the longest common run of words (the same
tokenizer; a contiguous copy, found with ``difflib``). Training responses come
from the run directory, so the metric is the same for distilled and
ground-truth runs; the controls (the run's validation examples) tell copying
apart from merely writing the same kind of text.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from typing import Any

SETTINGS = ("question", "half_response")
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
