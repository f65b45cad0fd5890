"""GSM8K (teacher.core.tasks.gsm8k): loading, prompts, answers and training responses.

Uses the real benchmark files under ../shared/data (or $DISTILL_DATA_DIR); no network.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from teacher.core import tasks as T
from teacher.core.tasks import Example, get_task, gsm8k_final_answer
from teacher.core.tasks.bbh import BBH_COT_3SHOT
from tests.teacher.tasks.helpers import make_example

GSM8K_SIZES = {"train": 7473, "test": 1319}  # the standard files


@pytest.fixture(scope="module")
def gsm8k_train(data_dir: Path) -> list[Example]:
    return get_task("gsm8k").load("train", data_dir=data_dir)


@pytest.mark.parametrize("split", ["train", "test"])
def test_gsm8k_load(data_dir: Path, split: str) -> None:
    examples = get_task("gsm8k").load(split, data_dir=data_dir)
    assert len(examples) == GSM8K_SIZES[split]
    first = examples[0]
    assert first.id == f"gsm8k/{split}/000000"
    assert (first.task, first.split) == ("gsm8k", split)
    assert first.answer.endswith(f"#### {first.target}")
    assert all(re.fullmatch(r"-?\d+", e.target) for e in examples)  # "1,200" -> "1200"


def test_gsm8k_ids_unique_and_stable(data_dir: Path, gsm8k_train: list[Example]) -> None:
    ids = [e.id for e in gsm8k_train]
    assert len(set(ids)) == len(ids)
    again = get_task("gsm8k").load("train", data_dir=data_dir, limit=5)
    assert again == gsm8k_train[:5]
    assert gsm8k_train[123].id == "gsm8k/train/000123"


def test_load_uses_default_data_dir(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv(T.DATA_DIR_ENV, str(data_dir))
    assert get_task("gsm8k").load("test", limit=3) == get_task("gsm8k").load(
        "test", data_dir=data_dir, limit=3
    )


def test_gsm8k_comma_target(gsm8k_train: list[Example]) -> None:
    with_comma = [e for e in gsm8k_train if "#### 1,200" in e.answer]
    assert with_comma and all(e.target == "1200" for e in with_comma)



GSM8K = get_task("gsm8k")


@pytest.mark.parametrize(
    ("text", "strict"),
    [
        ("so 6 * 7 = 42\n#### 42", "42"),
        ("#### 1,234", "1,234"),
        ("#### -5", "-5"),
        ("#### 5.", "5."),
        ("#### 5.0", "5.0"),
        ("#### $5", None),  # strict regex takes digits only
        ("The answer is 18.", "18"),  # gsm8k-cot format
        ("The answer is -3.5 dollars", "-3.5"),
        ("#### 7\nThe answer is 8.", "7"),  # "####" first
        ("The total is 42", None),
        ("", None),
        ("####42", None),
    ],
)
def test_gsm8k_extract_strict(text: str, strict: str | None) -> None:
    assert GSM8K.extract_answer(text) == strict


@pytest.mark.parametrize(
    ("text", "flexible"),
    [
        ("She has 3 apples, buys 4 more, so 7 in total.", "7"),
        ("It costs $1,234.", "$1,234."),
        ("Temperature fell to -12 degrees", "-12"),
        ("first 10 then 20 then 30", "30"),  # the last number wins
        ("#### 5\n", "5"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_gsm8k_extract_flexible(text: str, flexible: str | None) -> None:
    assert GSM8K.extract_answer_flexible(text) == flexible


@pytest.mark.parametrize(
    ("text", "target", "strict_ok", "flexible_ok"),
    [
        ("#### 1,234", "1234", True, True),
        ("#### 1234", "1,234", True, True),
        ("The answer is 5.", "5", True, True),
        ("#### 5.", "5", True, True),
        ("#### 5.0", "5", True, True),  # beyond lm-eval: numbers compared by value
        ("#### 5.50", "5.5", True, True),
        ("#### -5", "-5", True, True),
        ("#### -5", "5", False, False),
        ("it is $5", "5", False, True),
        ("The cost is $1,234.00 in total", "1234", False, True),
        ("3 then 4 then 5", "4", False, False),
        ("nothing", "5", False, False),
        ("#### 42", "Step one.\n#### 42", True, True),  # a full reference also works
    ],
)
def test_gsm8k_is_correct(text: str, target: str, strict_ok: bool, flexible_ok: bool) -> None:
    assert GSM8K.is_correct(text, target) is strict_ok
    assert GSM8K.is_correct(text, target, flexible=True) is flexible_ok


def test_gsm8k_lm_eval_exact_match_is_stricter() -> None:
    # lm-eval itself does not equate "5.0" and "5"; is_correct does.
    assert not T.exact_match(T.gsm8k_strict_match("#### 5.0"), "5", **T.GSM8K_METRIC)
    assert T.exact_match(T.gsm8k_strict_match("#### 1,234."), "1234", **T.GSM8K_METRIC)
    assert T.gsm8k_strict_match("no answer") == T.INVALID



def test_gsm8k_reference_response(gsm8k_train: list[Example]) -> None:
    first = gsm8k_train[0]
    assert GSM8K.reference_response(first) == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "#### 72"
    )
    for e in gsm8k_train:
        ref = GSM8K.reference_response(e)
        assert "<<" not in ref and ">>" not in ref, e.id
        assert ref.endswith(f"\n#### {e.target}") and ref.count("####") == 1, e.id
        assert GSM8K.is_correct(ref, e), e.id


def test_gsm8k_reference_response_normalises_final_line() -> None:
    ex = make_example("gsm8k", target="1200")
    ex = Example(**{**ex.__dict__, "answer": "A <<2*600=1200>>1,200 total.\n#### 1,200"})
    assert GSM8K.reference_response(ex) == "A 1,200 total.\n#### 1200"


def test_gsm8k_prompts(gsm8k_train: list[Example]) -> None:
    ex = gsm8k_train[0]
    chat = GSM8K.prompt(ex)
    assert chat == GSM8K.prompt(ex, fewshot=False) == GSM8K.prompt(ex, "gsm8k-cot-zeroshot")
    assert isinstance(chat, list) and len(chat) == 1 and chat[0]["role"] == "user"
    assert chat[0]["content"].startswith(ex.question) and '"#### <number>"' in chat[0]["content"]
    text = GSM8K.prompt(ex, fewshot=True)
    assert isinstance(text, str)
    assert text.startswith("Q: There are 15 trees in the grove.")
    assert text.count("\n\nQ: ") == 8 and text.count("The answer is") == 8
    assert text.endswith(f"\n\nQ: {ex.question}\nA:")
    with pytest.raises(ValueError, match="not 'gsm8k'"):
        GSM8K.prompt(ex, BBH_COT_3SHOT)
    with pytest.raises(ValueError, match="either"):
        GSM8K.prompt(ex, "gsm8k-cot-8shot", fewshot=True)



def test_gsm8k_training_response_uses_the_zero_shot_answer_line():
    task = get_task("gsm8k")
    assert task.training_response("So 5 + 5 = 10. The answer is 10.") == "So 5 + 5 = 10.\n#### 10"
    assert task.training_response("3 each. The answer is $1,200.") == "3 each.\n#### 1200"
    assert task.training_response("Half is 2.5. The answer is 2.5.") == "Half is 2.5.\n#### 2.5"
    assert task.training_response("12 * 2 = 24\n#### 24") == "12 * 2 = 24\n#### 24"  # as asked
    assert task.training_response("I am not sure.") == "I am not sure."


def test_rationale_is_the_response_without_its_answer_line():
    task = get_task("gsm8k")
    assert task.rationale("12 * 2 = 24\n#### 24") == "12 * 2 = 24"
    assert task.rationale("#### 24") == ""
    assert task.rationale("no answer line") is None


def test_gsm8k_final_answer_is_lm_evals_doc_to_target(gsm8k_train: list[Example]) -> None:
    # As written after the last "####" (what lm-eval's exact_match compares against);
    # Example.target is its canonical form.
    assert gsm8k_final_answer("A <<2*600=1200>>1,200.\n#### 1,200 ") == "1,200"
    assert gsm8k_final_answer("no marker") == "no marker"
    for e in gsm8k_train:
        final = gsm8k_final_answer(e.answer)
        assert final == e.answer.split("####")[-1].strip(), e.id
        assert e.target == (T.normalize_number(final) or final), e.id
