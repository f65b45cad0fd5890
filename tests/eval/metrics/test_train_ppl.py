"""The train_ppl metric: perplexity of the run's training responses, on a stand-in model."""

from __future__ import annotations

from eval.metrics.train_ppl import TrainPpl
from teacher.core.rundir import TrainExample
from tests.eval.metrics.fakes import FakeModel


async def test_train_ppl_scores_training_responses():
    prompt = [{"role": "user", "content": "q"}]
    data = [TrainExample("t0", prompt, "a b"), TrainExample("t1", prompt, "c d e")]
    rows = await TrainPpl().compute(FakeModel(), data, data_dir=None)
    assert rows == [{"id": "t0", "loglikelihood": -2.0, "tokens": 2},
                    {"id": "t1", "loglikelihood": -3.0, "tokens": 3}]
