"""The bbh metric: lm-eval bbh cot_fewshot answer extraction, subtask selection,
and its rows and measures on a stand-in model."""

from __future__ import annotations

import pytest

from eval.metrics import UnknownMetricError
from eval.metrics.bbh import Bbh, BbhSettings, bbh_subtasks, score_bbh
from teacher.core.tasks import BBH_SUBTASKS, Example
from tests.eval.metrics.fakes import FakeModel


@pytest.mark.parametrize(
    ("output", "target", "hit"),
    [
        ("A is true. So the answer is (B).", "(B)", 1.0),
        ("not ( True ) is False. So the answer is False.", "False", 1.0),
        ("So the answer is false.", "False", 0.0),  # cot_fewshot exact_match is case-sensitive
        ("The answer: (B)", "(B)", 0.0),  # no "the answer is"
        ("so the answer is (C).", "(B)", 0.0),
    ],
)
def test_bbh_get_answer_exact_match(output, target, hit):
    ex = Example("bbh/x/test/000000", "bbh/x", "test", "q", target, target)
    assert score_bbh(output, ex)["exact_match"] == hit


def test_bbh_subtasks_all_and_unknown():
    assert bbh_subtasks(["all"]) == list(BBH_SUBTASKS) == bbh_subtasks(None)
    assert bbh_subtasks(["navigate"]) == ["navigate"]
    with pytest.raises(UnknownMetricError, match=r"did you mean 'navigate'"):
        bbh_subtasks(["navigat"])


async def test_bbh_rows_and_per_subtask_measures(data_dir):
    metric = Bbh(BbhSettings(subtasks=["navigate", "sports_understanding"], limit=2))
    data = metric.load(None, data_dir)
    assert [sub for sub, _ in data] == ["navigate"] * 2 + ["sports_understanding"] * 2
    rows = await metric.compute(FakeModel(lambda p: "So the answer is Yes."), data,
                                data_dir=data_dir)
    assert {r["subtask"] for r in rows} == {"navigate", "sports_understanding"}
    names = [m.name for m in metric.measures()]
    assert names == ["bbh/exact_match", "bbh/navigate/exact_match",
                     "bbh/sports_understanding/exact_match"]
    per = {m.name: m.aggregate_fn()(m.select(rows)) for m in metric.measures()}
    hits = [r["exact_match"] for r in rows]
    assert per["bbh/exact_match"] == pytest.approx(sum(hits) / 4)
    assert per["bbh/navigate/exact_match"] == pytest.approx(sum(hits[:2]) / 2)
