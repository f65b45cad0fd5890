"""The gsm8k metric: lm-eval's strict / flexible filters per prompt format, and its
rows and measures on a stand-in model."""

from __future__ import annotations

import pytest

from eval.metrics.gsm8k import Gsm8k, Gsm8kSettings, gsm8k_target, score_gsm8k
from teacher.core.tasks.gsm8k import GSM8K_COT_8SHOT, GSM8K_COT_ZEROSHOT
from tests.eval.metrics.fakes import FakeModel, gsm8k_example


@pytest.mark.parametrize(
    ("output", "strict", "flexible"),
    [
        ("so 1000 + 234 = 1234\n#### 1234", 1.0, 1.0),  # "," ignored by the metric
        ("#### 1,234.", 1.0, 1.0),  # "," and the final "." ignored by the metric
        ("#### $1,234", 0.0, 1.0),  # strict's regex takes no "$"; flexible's does
        ("The total is 1234 dollars.", 0.0, 1.0),  # no "####" line: strict fails
        ("#### 1234.00", 0.0, 0.0),  # lm-eval compares strings: 1234.00 != 1234
        ("#### 1234\nor maybe 99", 1.0, 0.0),  # flexible takes the last number
        ("no number at all", 0.0, 0.0),
    ],
)
def test_gsm8k_zeroshot_strict_and_flexible(output, strict, flexible):
    s = score_gsm8k(output, gsm8k_example(), GSM8K_COT_ZEROSHOT)
    assert (s["strict_match"], s["flexible_extract"]) == (strict, flexible)


def test_gsm8k_8shot_uses_gsm8k_cot_strict_filter():
    ex = gsm8k_example("18")
    hit = score_gsm8k("16 - 3 - 4 = 9. 9 * 2 = 18. The answer is 18.\n\n", ex, GSM8K_COT_8SHOT)
    assert hit["answer_strict"] == "18" and hit["strict_match"] == 1.0
    # The zero-shot "####" line is not what gsm8k_cot's strict filter reads.
    miss = score_gsm8k("#### 18", ex, GSM8K_COT_8SHOT)
    assert miss["answer_strict"] == "[invalid]" and miss["strict_match"] == 0.0
    assert miss["flexible_extract"] == 1.0
    neg = score_gsm8k("The answer is -5.", gsm8k_example("-5"), GSM8K_COT_8SHOT)
    assert neg["strict_match"] == 1.0


def test_gsm8k_target_is_the_text_lm_eval_compares():
    # lm-eval's doc_to_target keeps the number as written; Example.target is canonical.
    ex = gsm8k_example("1,234")
    ex = type(ex)(ex.id, ex.task, ex.split, ex.question, ex.answer, "1234")
    assert gsm8k_target(ex) == "1,234"


async def test_gsm8k_rows_and_measures_on_a_stand_in_model():
    metric = Gsm8k(Gsm8kSettings(limit=2))
    data = [gsm8k_example("18", 0), gsm8k_example("7", 1)]
    model = FakeModel(lambda prompt: "so #### 18")
    rows = await metric.compute(model, data, data_dir=None)
    assert [r["id"] for r in rows] == [ex.id for ex in data]
    assert [r["strict_match"] for r in rows] == [1.0, 0.0]
    assert rows[0]["output"] == "so #### 18" and rows[0]["target"] == "18"
    assert model.prompts[0][-1]["role"] == "user"  # the zero-shot chat prompt
    got = {m.name: m.aggregate_fn()(rows) for m in metric.measures()}
    assert got == {"gsm8k/strict_match": 0.5, "gsm8k/flexible_extract": 0.5}
    assert metric.headline().name == "gsm8k/strict_match"
    (gain,) = metric.summary()
    assert gain.path == ("target_gain",) and gain.change(0.5, 0.25) == 25.0
    assert metric.count(data) == 2
