"""BIG-Bench-Hard (teacher.core.tasks.bbh): the 27 subtasks, CoT prompts and answers.

Uses the real benchmark files under ../shared/data (or $DISTILL_DATA_DIR); no network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from teacher.core.tasks import BBH_SUBTASKS, get_task
from tests.teacher.tasks.helpers import make_example

# BIG-Bench-Hard: 250 examples per subtask except these three.
BBH_SMALL = {"causal_judgement": 187, "penguins_in_a_table": 146, "snarks": 178}


def test_bbh_subtasks_match_data_files(data_dir: Path) -> None:
    assert sorted(p.stem for p in (data_dir / "bbh").glob("*.json")) == sorted(BBH_SUBTASKS)


@pytest.mark.parametrize("subtask", BBH_SUBTASKS)
def test_every_bbh_subtask_loads(data_dir: Path, subtask: str) -> None:
    task = get_task(f"bbh/{subtask}")
    examples = task.load("test", data_dir=data_dir)
    assert len(examples) == BBH_SMALL.get(subtask, 250)
    assert examples[0].id == f"bbh/{subtask}/test/000000"
    assert len({e.id for e in examples}) == len(examples)
    assert all(e.question and e.target and e.answer == e.target for e in examples)
    prompt = task.prompt(examples[0], data_dir=data_dir)
    assert isinstance(prompt, str)
    assert prompt.endswith(f"\n\nQ: {examples[0].question}\nA: Let's think step by step.\n")
    assert prompt.count("A: Let's think step by step.") == 4  # 3 exemplars + the question
    assert "canary" not in prompt and "-----" not in prompt
    # The reference response and the exemplars' last sentence score as correct.
    for e in examples:
        assert task.is_correct(task.reference_response(e), e)
        assert task.extract_answer(task.reference_response(e)) == e.target


def test_bbh_prompt_format(data_dir: Path) -> None:
    task = get_task("bbh/boolean_expressions")
    ex = task.load("test", data_dir=data_dir, limit=1)[0]
    assert ex.question == "not ( True ) and ( True ) is" and ex.target == "False"
    prompt = task.prompt(ex, data_dir=data_dir)
    assert prompt.startswith(
        "Evaluate the result of a random Boolean expression.\n\n"
        "Q: not ( ( not not True ) ) is\nA: Let's think step by step.\nRemember that (i)"
    )
    assert prompt.endswith(
        "So the answer is True.\n\nQ: not ( True ) and ( True ) is\nA: Let's think step by step.\n"
    )
    assert prompt == task.prompt(ex, fewshot=True, data_dir=data_dir)
    assert prompt == task.prompt(ex, "bbh-cot-3shot@v1", data_dir=data_dir)
    prefix = (data_dir / "bbh" / "cot-prompts" / "boolean_expressions.txt").read_text()
    question = f"\n\nQ: {ex.question}\nA: Let's think step by step.\n"
    assert prompt == prefix.split("-----\n", 1)[1] + question
    chat = task.prompt(ex, fewshot=False)
    assert isinstance(chat, list) and chat[0]["role"] == "user"
    assert chat[0]["content"].startswith(ex.question) and "So the answer is" in chat[0]["content"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Let's evaluate. So the answer is False.", "False"),
        ("So the answer is (B).", "(B)"),
        ("so the answer is ] } ].\nDone", "] } ]"),
        ("So the answer is 42", "4"),  # lm-eval drops the last character, period or not
        ("So the answer is 7.\nSo the answer is 8.", "7"),  # the first match
        ("The answer is (A).", None),  # lowercase "the" only
        ("I don't know.", None),
        ("So the answer is .", None),
    ],
)
def test_bbh_extract_strict(text: str, expected: str | None) -> None:
    assert get_task("bbh/date_understanding").extract_answer(text) == expected


MC_QUESTION = "Which is a fruit?\nOptions:\n(A) carrot\n(B) apple pie\n(C) apple\n(D) rock"


@pytest.mark.parametrize(
    ("subtask", "text", "question", "expected"),
    [
        ("boolean_expressions", "True and then False, finally True.", None, "True"),
        ("causal_judgement", "Yes... no wait, no", None, "no"),
        ("formal_fallacies", "the argument is invalid", None, "invalid"),
        ("date_understanding", "(A) is wrong, (C) is right", MC_QUESTION, "(C)"),
        ("date_understanding", "It must be an Apple!", MC_QUESTION, "(C)"),  # option text
        ("date_understanding", "Answer: D", MC_QUESTION, "(D)"),  # ": letter"
        ("date_understanding", "It must be an apple", None, None),  # needs the options
        ("object_counting", "I count 3 + 4 = 7 things", None, "7"),
        ("object_counting", "There are twenty one things", None, "21"),  # number words
        ("object_counting", "twenty-one", None, "-"),  # lm-eval quirk: "-" matches [-0-9]+
        ("multistep_arithmetic_two", "so it is -42", None, "-42"),
        ("sports_understanding", "That is not plausible.", None, "no"),
        ("sports_understanding", "Quite plausible", None, "yes"),
        ("web_of_lies", "So Jim tells the truth", None, "yes"),
        ("dyck_languages", "So we need ] ) >", None, "] ) >"),
        (
            "word_sorting",
            "First cat, then apple; overall: apple bee cat",
            "Sort the following words alphabetically: List: cat bee apple",
            "apple bee cat",
        ),
        ("navigate", "nothing useful", None, None),
    ],
)
def test_bbh_extract_flexible(
    subtask: str, text: str, question: str | None, expected: str | None
) -> None:
    task = get_task(f"bbh/{subtask}")
    ex = make_example(task.name, question=question) if question is not None else None
    assert task.extract_answer_flexible(text, ex) == expected


def test_bbh_is_correct() -> None:
    task = get_task("bbh/web_of_lies")
    assert task.is_correct("So the answer is Yes.", "Yes")
    assert not task.is_correct("So the answer is yes.", "Yes")  # strict: case matters
    assert task.is_correct("So Jim tells the truth.", "Yes", flexible=True)  # ignore_case
    counting = get_task("bbh/object_counting")
    assert counting.is_correct("So the answer is 7.0.", "7")  # numbers by value
    mc = get_task("bbh/date_understanding")
    ex = make_example(mc.name, question=MC_QUESTION, target="(C)")
    assert mc.is_correct("It is the apple.", ex, flexible=True)
    assert not mc.is_correct("It is the apple.", ex)



def test_bbh_training_response_is_unchanged() -> None:
    assert get_task("bbh/navigate").training_response("So the answer is Yes.") == \
        "So the answer is Yes."


def test_bbh_has_no_rationale() -> None:
    assert get_task("bbh/navigate").rationale("So the answer is Yes.") is None
