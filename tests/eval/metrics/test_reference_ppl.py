"""The reference_ppl metric: perplexity of the gsm8k references after their prompt,
on a stand-in model."""

from __future__ import annotations

import math

import pytest

from eval.metrics.reference_ppl import ReferencePpl, ReferencePplSettings
from tests.eval.metrics.fakes import FakeModel, gsm8k_example


async def test_reference_ppl_scores_the_reference_response():
    metric = ReferencePpl(ReferencePplSettings(checkpoints=False))
    assert not metric.wants_checkpoints() and metric.on_checkpoints
    rows = await metric.compute(FakeModel(), [gsm8k_example("18")], data_dir=None)
    # The stand-in's NLL is one per word of the completion.
    assert rows[0]["loglikelihood"] == -rows[0]["tokens"] and rows[0]["tokens"] > 0
    ppl, nll = metric.measures()
    assert ppl.aggregate_fn()(rows) == pytest.approx(math.e)
    assert metric.headline() == ppl
    assert rows[0]["nll_mean"] == pytest.approx(1.0)  # per token: the stand-in's -1 each
    assert nll.name == "reference_ppl/gsm8k_nll" and not nll.higher_is_better


async def test_reference_nll_is_per_item_and_compared():
    metric = ReferencePpl()
    assert metric.settings.template == "gsm8k-cot-zeroshot"  # the references' own format
    data = [gsm8k_example("18", 0), gsm8k_example("1,234,567", 1)]
    rows = await metric.compute(FakeModel(), data, data_dir=None)
    # One row per item (items.jsonl), each with its own mean NLL per token.
    assert [r["id"] for r in rows] == [ex.id for ex in data]
    assert all(r["nll_mean"] == pytest.approx(-r["loglikelihood"] / r["tokens"]) for r in rows)
    (compared,) = metric.compared()
    # Every item weighs the same (not weighted by tokens, as the perplexity is).
    rows[0]["nll_mean"], rows[1]["nll_mean"] = 1.0, 3.0
    assert compared.aggregate_fn()(rows) == pytest.approx(2.0)


def test_compare_pairs_the_reference_nll_per_item():
    from eval.compare import headlines

    (h,) = [h for h in headlines([ReferencePpl()]) if h.key == "reference_ppl/gsm8k_nll"]
    assert h.column == "" and not h.higher_is_better and h.metric == "reference_ppl"
