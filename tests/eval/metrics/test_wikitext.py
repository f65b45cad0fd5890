"""The wikitext metric: lm-eval's rolling windows and perplexity aggregations, and its
rows on a stand-in model."""

from __future__ import annotations

import math

import pytest

from eval.metrics.wikitext import Wikitext, WikitextSettings
from eval.perplexity import bits_per_byte, rolling_windows, weighted_perplexity
from teacher.core.tasks import Example
from tests.eval.metrics.fakes import FakeModel


def test_rolling_windows_by_hand():
    # lm-eval, max_length 4: first window from the prefix token, later ones from one
    # token; the short last window keeps the rest of its input as context.
    wins = list(rolling_windows([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], prefix_token=0, max_length=4))
    assert wins == [([0], [1, 2, 3, 4]), ([4], [5, 6, 7, 8]), ([6, 7, 8], [9, 10])]
    assert list(rolling_windows([5, 6], 0, 4)) == [([0], [5, 6])]
    assert list(rolling_windows([], 0, 4)) == []
    predicted = [t for _, p in rolling_windows(list(range(1, 101)), 0, 7) for t in p]
    assert predicted == list(range(1, 101))  # every token scored exactly once


def test_perplexity_of_a_uniform_distribution():
    vocab = 50
    lls = [20 * math.log(1 / vocab), 30 * math.log(1 / vocab)]  # two docs, 20 + 30 tokens
    assert weighted_perplexity(lls, [20, 30]) == pytest.approx(vocab)
    # One bit per byte: ll = -ln 2 per byte.
    assert bits_per_byte([-math.log(2) * 10, -math.log(2) * 6], [10, 6]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        weighted_perplexity([-1.0], [0])


def test_wikitext_measures_aggregate_like_lm_eval():
    items = [{"loglikelihood": -10.0, "words": 4, "bytes": 20},
             {"loglikelihood": -30.0, "words": 6, "bytes": 30}]
    got = {m.name: m.aggregate_fn()(items) for m in Wikitext().measures()}
    assert got["wikitext/word_perplexity"] == pytest.approx(math.exp(40 / 10))
    assert got["wikitext/byte_perplexity"] == pytest.approx(math.exp(40 / 50))
    assert got["wikitext/bits_per_byte"] == pytest.approx(40 / 50 / math.log(2))


async def test_wikitext_rows_count_every_token_once():
    metric = Wikitext(WikitextSettings(max_length=3))
    assert metric.min_context() == 4  # a window plus its one context token
    page = "one two three four five six seven"
    data = [Example("wikitext-2/test/000000", "wikitext-2", "test", "", page, "", raw=page)]
    (row,) = await metric.compute(FakeModel(), data, data_dir=None)
    # Seven whitespace tokens at -1.0 each, in windows of three.
    assert row["tokens"] == 7 and row["loglikelihood"] == pytest.approx(-7.0)
    assert (row["words"], row["bytes"]) == (7, len(page.encode()))
