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
    (ppl,) = metric.measures()
    assert ppl.aggregate_fn()(rows) == pytest.approx(math.e)
    assert metric.headline() == ppl
