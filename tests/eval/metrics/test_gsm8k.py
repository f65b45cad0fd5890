"""The gsm8k metric: lm-eval's strict / flexible filters per prompt format, and its
rows and measures on a stand-in model."""

from __future__ import annotations

import pytest

from eval.metrics.gsm8k import Gsm8k, Gsm8kSettings, gsm8k_target, score_gsm8k
from teacher.core.tasks import last_boxed_content
from teacher.core.tasks.gsm8k import GSM8K_COT_8SHOT, GSM8K_COT_BOXED, GSM8K_COT_ZEROSHOT
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


def test_boxed_template_renders_qwens_prompt():
    # QwenLM/Qwen2.5-Math evaluation/utils.py "qwen-boxed", as chat messages.
    assert GSM8K_COT_BOXED.render(question="What is {x}?") == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is {x}?\nPlease reason step by step, and put "
                                    "your final answer within \\boxed{}."},
    ]
    assert GSM8K_COT_BOXED.key == "gsm8k-cot-boxed@v1" and GSM8K_COT_BOXED.stop == ()


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("so \\boxed{18}.", "18"),
        ("\\boxed{1} then \\boxed{\\frac{3}{4}} end", "\\frac{3}{4}"),  # last, braces balanced
        ("$\\boxed 42$ and more", "42"),  # "\\boxed N" runs to the next "$"
        ("\\boxed{18", None),  # unclosed
        ("\\fbox{18}", None),  # lm-eval's remove_boxed would assert
        ("no box", None),
    ],
)
def test_last_boxed_content(text, content):
    assert last_boxed_content(text) == content


@pytest.mark.parametrize(
    ("output", "strict", "flexible", "answer"),
    [
        ("5 + 7 = 12 ... so the answer is \\(\\boxed{1234}\\).", 1.0, 1.0, "1234"),
        ("\\boxed{1,234}", 1.0, 1.0, "1,234"),  # "," ignored by the metric
        ("\\boxed{1{,}234}", 0.0, 1.0, "1,234"),  # LaTeX thousands separator
        ("\\boxed{\\$1,234}", 0.0, 1.0, "$1,234"),  # "$" ignored by the metric
        ("\\boxed{1234 \\text{ dollars}}", 0.0, 1.0, "1234"),  # trailing unit
        ("\\boxed{1234.}", 1.0, 1.0, "1234."),  # the final "." ignored
        ("\\boxed{1234.00}", 0.0, 0.0, "1234.00"),  # lm-eval compares strings
        ("\\boxed{99} wait, \\boxed{1234}", 1.0, 1.0, "1234"),  # the last box
        ("\\boxed{x} so 1234 apples", 0.0, 1.0, "1234"),  # no number boxed: the text's last
        ("The total is 1234 dollars.", 0.0, 1.0, "1234"),  # no box at all
        ("#### 1234", 0.0, 1.0, "1234"),  # the training format is not this prompt's strict
        ("\\boxed{1234} km^2", 1.0, 1.0, "1234"),  # after the box: the box wins
        ("\\boxed{1234 \\text{ m}^2}", 0.0, 0.0, "2"),  # a number in the unit: known miss
        ("no number at all", 0.0, 0.0, "[invalid]"),
    ],
)
def test_gsm8k_boxed_strict_and_flexible(output, strict, flexible, answer):
    s = score_gsm8k(output, gsm8k_example("1,234"), GSM8K_COT_BOXED)
    assert (s["strict_match"], s["flexible_extract"]) == (strict, flexible)
    assert s["answer_flexible"] == answer


def test_truncated_is_the_max_tokens_stop():
    ex = gsm8k_example("18")
    assert score_gsm8k("\\boxed{18}", ex, GSM8K_COT_BOXED, "eos")["truncated"] == 0.0
    cut = score_gsm8k("so 9 * 2 = 18 and", ex, GSM8K_COT_BOXED, "max_tokens")
    assert cut["truncated"] == 1.0 and cut["stop_reason"] == "max_tokens"
    assert cut["flexible_extract"] == 1.0  # a cut-off answer can still be right


async def test_gsm8k_rows_and_measures_on_a_stand_in_model():
    metric = Gsm8k(Gsm8kSettings(limit=3, max_new_tokens=5))
    data = [gsm8k_example("18", 0), gsm8k_example("7", 1), gsm8k_example("9", 2)]
    # The stand-in cuts off at max_new_tokens words: the third answer is cut off.
    outputs = {0: "so \\boxed{18}", 1: "it is 7", 2: "one two three four five six"}
    model = FakeModel(lambda prompt: outputs[int(prompt[-1]["content"].split()[0][1:])])
    data = [type(ex)(ex.id, ex.task, ex.split, f"#{i} q?", ex.answer, ex.target)
            for i, ex in enumerate(data)]
    rows = await metric.compute(model, data, data_dir=None)
    assert [r["id"] for r in rows] == [ex.id for ex in data]
    assert [r["strict_match"] for r in rows] == [1.0, 0.0, 0.0]
    assert [r["flexible_extract"] for r in rows] == [1.0, 1.0, 0.0]
    assert [r["truncated"] for r in rows] == [0.0, 0.0, 1.0]
    assert rows[0]["output"] == "so \\boxed{18}" and rows[0]["target"] == "18"
    # The default prompt: the boxed chat prompt, its system turn first.
    assert model.prompts[0][0]["content"] == "You are a helpful assistant."
    assert model.prompts[0][-1]["content"].endswith("within \\boxed{}.")
    got = {m.name: m.aggregate_fn()(rows) for m in metric.measures()}
    assert got == pytest.approx({"gsm8k/flexible_extract": 2 / 3, "gsm8k/strict_match": 1 / 3,
                                 "gsm8k/truncated": 1 / 3})
    assert {m.name: m.higher_is_better for m in metric.measures()} == {
        "gsm8k/flexible_extract": True, "gsm8k/strict_match": True, "gsm8k/truncated": False}
    # Flexible extraction is the headline; strict stays a reported measure.
    assert metric.headline().name == "gsm8k/flexible_extract"
    (gain,) = metric.summary()
    assert gain.path == ("target_gain",) and gain.measure.name == "gsm8k/flexible_extract"
    assert gain.change(0.5, 0.25) == 25.0
    assert metric.count(data) == 3


async def test_gsm8k_training_prompt_still_scores_its_format():
    metric = Gsm8k(Gsm8kSettings(limit=2, template=GSM8K_COT_ZEROSHOT.id))
    model = FakeModel(lambda prompt: "so #### 18")
    rows = await metric.compute(model, [gsm8k_example("18", 0), gsm8k_example("7", 1)],
                                data_dir=None)
    assert [r["strict_match"] for r in rows] == [1.0, 0.0]
    assert model.prompts[0][-1]["role"] == "user" and len(model.prompts[0]) == 1
