"""Rolling-window perplexity, as lm-evaluation-harness 0.4.13 computes ``wikitext``.

Each document is tokenized without special tokens and cut into disjoint windows of
``max_length`` tokens (``lm_eval/utils.py`` ``get_rolling_token_windows`` with
``context_len=1`` and ``make_disjoint_window``): the first window is predicted from
the prefix token (BOS, else EOS: ``HFLM.prefix_token_id``), each later one from the
single token before it. A document's loglikelihood is the sum over its windows.
Aggregation is lm-eval's ``weighted_perplexity`` over the corpus,
``exp(-sum(loglikelihood) / sum(units))``, with units = words (word perplexity) or
UTF-8 bytes (byte perplexity) of the *original* page (``wikitext_units``), and
``bits_per_byte = -sum(loglikelihood) / sum(bytes) / ln 2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

Window = tuple[list[int], list[int]]  # (context ids, predicted ids)


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_length: int) -> Iterator[Window]:
    """lm-eval's disjoint rolling windows (context_len=1) over ``tokens``."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    tokens = list(tokens)
    if not tokens:
        return
    first = min(max_length, len(tokens))
    # get_rolling_token_windows yields (input, targets) pairs; make_disjoint_window
    # then keeps the part of the input before the targets as the context. A full
    # window is predicted from one token; the last, shorter one sees more context.
    yield [prefix_token], tokens[:first]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, max_length)
        end = predicted + n
        window = tokens[end - max_length - 1 : end - 1]
        yield window[: len(window) - (n - 1)], tokens[end - n : end]
        predicted += n


def weighted_perplexity(loglikelihoods: Sequence[float], units: Sequence[float]) -> float:
    """lm-eval ``weighted_perplexity``: exp(-sum(ll) / sum(units))."""
    total = math.fsum(units)
    if total <= 0:
        raise ValueError("no units to normalise by")
    return math.exp(-math.fsum(loglikelihoods) / total)


def bits_per_byte(loglikelihoods: Sequence[float], num_bytes: Sequence[float]) -> float:
    """lm-eval ``bits_per_byte``: -sum(ll) / sum(bytes) / ln 2."""
    total = math.fsum(num_bytes)
    if total <= 0:
        raise ValueError("no bytes to normalise by")
    return -math.fsum(loglikelihoods) / total / math.log(2)


def prefix_token(tokenizer: Any) -> int:
    """lm-eval ``HFLM.prefix_token_id``: BOS if the tokenizer has one, else EOS."""
    if tokenizer.bos_token_id is not None:
        return int(tokenizer.bos_token_id)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token")
    return int(tokenizer.eos_token_id)


async def document_loglikelihoods(
    model: Any, documents: Sequence[str], max_length: int, batch_windows: int = 8
) -> list[tuple[float, int]]:
    """(summed loglikelihood, token count) of each document under ``model``
    (:class:`eval.metrics.model.ServedModel`).

    Uses token-level scoring (windows are token ids, not text), a few windows per
    call so the engine can batch them.
    """
    from teacher.serving.engine import ScoreInput

    tokenizer = model.tokenizer
    prefix = prefix_token(tokenizer)
    windows: list[tuple[int, ScoreInput]] = []
    counts = []
    for d, text in enumerate(documents):
        ids = tokenizer.encode_completion(text)
        counts.append(len(ids))
        for ctx, pred in rolling_windows(ids, prefix, max_length):
            windows.append((d, ScoreInput(ctx, pred)))
    totals = [0.0] * len(documents)
    for start in range(0, len(windows), batch_windows):
        chunk = windows[start : start + batch_windows]
        logprobs = await model.score_tokens([w for _, w in chunk])
        for (d, _), lps in zip(chunk, logprobs, strict=True):
            totals[d] += math.fsum(lps)
    return list(zip(totals, counts, strict=True))
