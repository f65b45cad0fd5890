"""The task registry (teacher.core.tasks) and prompt templates (teacher.core.templates).

Uses the real benchmark files under ../shared/data (or $DISTILL_DATA_DIR); no network.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from teacher.core import tasks as T
from teacher.core.tasks import (
    BBH_SUBTASKS,
    DataFormatError,
    Example,
    default_data_dir,
    get_task,
    list_tasks,
    normalize_number,
)
from teacher.core.templates import (
    BBH_COT_3SHOT,
    GSM8K_COT_8SHOT,
    GSM8K_COT_ZEROSHOT,
    get_template,
    list_templates,
)

# Sizes of the standard files (BIG-Bench-Hard: 250 per subtask except these three).
GSM8K_SIZES = {"train": 7473, "test": 1319}
BBH_SMALL = {"causal_judgement": 187, "penguins_in_a_table": 146, "snarks": 178}


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """$DISTILL_DATA_DIR, else ../shared/data beside the repo (as conftest's; local so
    this file stands alone)."""
    env = os.environ.get(T.DATA_DIR_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"benchmark data not found at {path}")
    return path


@pytest.fixture(scope="module")
def gsm8k_train(data_dir: Path) -> list[Example]:
    return get_task("gsm8k").load("train", data_dir=data_dir)


def _ex(task: str, question: str = "", target: str = "") -> Example:
    return Example(
        id="t/0", task=task, split="test", question=question, answer=target, target=target
    )


# ---- registry ---------------------------------------------------------------------------


def test_list_tasks() -> None:
    names = list_tasks()
    assert len(names) == 29 == len(set(names))
    assert {"gsm8k", "wikitext-2"} <= set(names)
    assert [n for n in names if n.startswith("bbh/")] == sorted(f"bbh/{s}" for s in BBH_SUBTASKS)
    assert all(get_task(n).name == n for n in names)


def test_bbh_subtasks_match_data_files(data_dir: Path) -> None:
    assert sorted(p.stem for p in (data_dir / "bbh").glob("*.json")) == sorted(BBH_SUBTASKS)


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("gsm8", "gsm8k"),
        ("gsm8k-cot", "gsm8k"),
        ("wikitext2", "wikitext-2"),
        ("bbh/boolean_expresions", "bbh/boolean_expressions"),
        ("navigate", "bbh/navigate"),
        ("bbh_cot_fewshot_word_sorting", "bbh/word_sorting"),
    ],
)
def test_unknown_task_did_you_mean(name: str, suggestion: str) -> None:
    with pytest.raises(ValueError, match="did you mean") as info:
        get_task(name)
    assert repr(suggestion) in str(info.value)
    assert repr(name) in str(info.value)


def test_unknown_task_without_close_match() -> None:
    with pytest.raises(ValueError, match="unknown task 'zzzz'") as info:
        get_task("zzzz")
    assert "did you mean" not in str(info.value)
    assert "list_tasks()" in str(info.value)


# ---- data directory and errors ---------------------------------------------------------


def test_default_data_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(T.DATA_DIR_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.setenv(T.DATA_DIR_ENV, str(tmp_path / "missing"))
    assert default_data_dir() == tmp_path / "missing"  # returned as is; load then fails


def test_default_data_dir_finds_shared(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.delenv(T.DATA_DIR_ENV, raising=False)
    found = default_data_dir()
    repo_shared = Path(T.__file__).resolve().parents[2].parent / "shared" / "data"
    if repo_shared.is_dir():
        assert found == repo_shared.resolve()


def test_missing_data_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="data directory not found") as info:
        get_task("gsm8k").load("test", data_dir=missing)
    assert str(missing) in str(info.value)


def test_missing_data_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(T.DATA_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=re.escape(f"${T.DATA_DIR_ENV}")):
        get_task("bbh/navigate").load("test")


@pytest.mark.parametrize(
    ("task", "sub"), [("gsm8k", "gsm8k"), ("bbh/snarks", "bbh"), ("wikitext-2", "wikitext-2")]
)
def test_missing_task_dir(tmp_path: Path, task: str, sub: str) -> None:
    t = get_task(task)
    with pytest.raises(FileNotFoundError, match="task directory not found") as info:
        t.load(t.splits[-1], data_dir=tmp_path)
    assert str(tmp_path / sub) in str(info.value)


def test_missing_split_file(tmp_path: Path) -> None:
    (tmp_path / "gsm8k").mkdir()
    with pytest.raises(FileNotFoundError, match="split 'test'") as info:
        get_task("gsm8k").load("test", data_dir=tmp_path)
    assert str(tmp_path / "gsm8k" / "test.jsonl") in str(info.value)


@pytest.mark.parametrize(("task", "split"), [("gsm8k", "validation"), ("bbh/navigate", "train")])
def test_unknown_split(task: str, split: str) -> None:
    with pytest.raises(ValueError, match=f"unknown split '{split}'"):
        get_task(task).load(split)


def test_bad_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        get_task("gsm8k").load("test", limit=-1)


def _write_gsm8k(tmp_path: Path, lines: list[str]) -> Path:
    (tmp_path / "gsm8k").mkdir()
    path = tmp_path / "gsm8k" / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"question": "1+1?", "answer": "1+1 = <<1+1=2>>2\n#### 2"})


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"question": "q", "answer": ', "invalid JSON"),
        ('["not", "an", "object"]', "expected a JSON object"),
        ('{"question": "q"}', "'answer' missing"),
        ('{"question": 3, "answer": "#### 3"}', "'question' missing or not a string"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path: Path, bad: str, message: str) -> None:
    path = _write_gsm8k(tmp_path, [GOOD, "", GOOD, bad, GOOD])
    with pytest.raises(DataFormatError, match=message) as info:
        get_task("gsm8k").load("train", data_dir=tmp_path)
    assert str(info.value).startswith(f"{path}:4:")


def test_valid_jsonl_in_tmp_dir(tmp_path: Path) -> None:
    _write_gsm8k(tmp_path, [GOOD, "", GOOD])  # blank lines are skipped
    examples = get_task("gsm8k").load("train", data_dir=tmp_path)
    assert [e.id for e in examples] == ["gsm8k/train/000000", "gsm8k/train/000001"]
    assert examples[0].target == "2"


def test_malformed_bbh_json_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bbh").mkdir()
    path = tmp_path / "bbh" / "navigate.json"
    path.write_text('{"canary": "x",\n "examples": [\n  {"input": "a", "target": }\n]}\n')
    with pytest.raises(DataFormatError) as info:
        get_task("bbh/navigate").load("test", data_dir=tmp_path)
    assert str(info.value).startswith(f"{path}:3:")


def test_hub_failure_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # No local data and no network: the error names the hub id and how to fix it.
    class NoHub:
        @staticmethod
        def load_dataset(*args: object, **kwargs: object) -> None:
            raise ConnectionError("offline")

    monkeypatch.setattr(T, "default_data_dir", lambda: None)
    monkeypatch.setattr(T, "_datasets", lambda: NoHub)
    with pytest.raises(RuntimeError, match=r"openai/gsm8k.*offline.*DISTILL_DATA_DIR"):
        get_task("gsm8k").load("test")


def test_hub_rows_are_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class FakeDataset(list):
        def to_list(self) -> list:
            return list(self)

    class FakeHub:
        @staticmethod
        def load_dataset(path: str, name: str, split: str) -> FakeDataset:
            calls.append((path, name, split))
            return FakeDataset([{"page": " = T = \n Hi @-@ there . \n"}])

    monkeypatch.setattr(T, "default_data_dir", lambda: None)
    monkeypatch.setattr(T, "_datasets", lambda: FakeHub)
    [doc] = get_task("wikitext-2").load("validation")
    assert calls == [("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "validation")]
    assert doc.answer == " = T =\nHi-there.\n"


# ---- loading the real data -------------------------------------------------------------


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


def test_wikitext_load(data_dir: Path) -> None:
    task = get_task("wikitext-2")
    assert task.output_type == "loglikelihood_rolling"
    test = task.load("test", data_dir=data_dir)
    valid = task.load("validation", data_dir=data_dir)
    # The document counts of EleutherAI/wikitext_document_level.
    assert (len(test), len(valid)) == (62, 60)
    doc = test[0]
    assert doc.id == "wikitext-2/test/000000" and doc.question == "" and doc.target == ""
    assert doc.raw.startswith(" = Robert <unk> = \n")
    assert doc.answer.startswith(" = Robert <unk> =\n")
    assert " @-@ " in doc.raw and " @-@ " not in doc.answer
    # Documents cover the whole file in order, less a whitespace-only head.
    text = (data_dir / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    joined = "\n".join(d.raw for d in test)
    assert text.endswith(joined) and not text[: len(text) - len(joined)].strip()
    words, nbytes = T.wikitext_units(doc.raw)
    assert nbytes == len(doc.raw.encode()) and words > 100
    assert task.prompt(doc) == ""
    with pytest.raises(NotImplementedError):
        task.extract_answer("x")


def test_wikitext_documents_split() -> None:
    text = " = A = \n a\n = = Sub = = \n b\n = B = \n c\n"
    assert T.wikitext_documents(text) == [" = A = \n a\n = = Sub = = \n b", " = B = \n c\n"]


def test_wikitext_detokenizer() -> None:
    page = ' = = Title = = \n The cat \'s 1 @,@ 000 toys ( 3 ) cost $ 5 @.@ 5 , " he " said . \n'
    assert T.wikitext_detokenizer(page) == (
        ' == Title ==\nThe cat\'s 1,000 toys (3) cost $ 5.5, "he" said.\n'
    )


# ---- GSM8K answers ---------------------------------------------------------------------

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


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("42", "42"),
        ("1,234", "1234"),
        ("$5", "5"),
        ("5.", "5"),
        ("5.0", "5"),
        ("-5", "-5"),
        ("-$1,000.50", "-1000.5"),
        ("+7", "7"),
        ("-0.0", "0"),
        ("0.25", "0.25"),
        ("100", "100"),
        ("12345678901234567890", "12345678901234567890"),
        ("five", None),
        ("", None),
        ("1.2.3", None),
    ],
)
def test_normalize_number(raw: str, canonical: str | None) -> None:
    assert normalize_number(raw) == canonical


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
    ex = _ex("gsm8k", target="1200")
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


# ---- BBH answers -----------------------------------------------------------------------


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
    ex = _ex(task.name, question=question) if question is not None else None
    assert task.extract_answer_flexible(text, ex) == expected


def test_bbh_is_correct() -> None:
    task = get_task("bbh/web_of_lies")
    assert task.is_correct("So the answer is Yes.", "Yes")
    assert not task.is_correct("So the answer is yes.", "Yes")  # strict: case matters
    assert task.is_correct("So Jim tells the truth.", "Yes", flexible=True)  # ignore_case
    counting = get_task("bbh/object_counting")
    assert counting.is_correct("So the answer is 7.0.", "7")  # numbers by value
    mc = get_task("bbh/date_understanding")
    ex = _ex(mc.name, question=MC_QUESTION, target="(C)")
    assert mc.is_correct("It is the apple.", ex, flexible=True)
    assert not mc.is_correct("It is the apple.", ex)


# ---- templates -------------------------------------------------------------------------


def test_templates_registry() -> None:
    keys = [t.key for t in list_templates()]
    assert len(keys) == len(set(keys))
    assert {"gsm8k-cot-zeroshot", "gsm8k-cot-8shot"} <= {t.id for t in list_templates("gsm8k")}
    assert get_template("gsm8k-cot-8shot") is GSM8K_COT_8SHOT
    assert get_template("gsm8k-cot-8shot@v1") is GSM8K_COT_8SHOT
    assert get_template("gsm8k-cot-zeroshot", version=1) is GSM8K_COT_ZEROSHOT
    assert GSM8K_COT_ZEROSHOT.key == "gsm8k-cot-zeroshot@v1"
    assert re.fullmatch(r"[0-9a-f]{16}", GSM8K_COT_8SHOT.digest)
    assert GSM8K_COT_8SHOT.stop == ("Q:", "</s>", "<|im_end|>")
    with pytest.raises(ValueError, match="no version 9"):
        get_template("gsm8k-cot-8shot", version=9)
    with pytest.raises(ValueError, match="unknown template"):
        get_template("nope")
    with pytest.raises(KeyError, match="missing"):
        GSM8K_COT_8SHOT.render()


def test_template_render_keeps_braces() -> None:
    assert GSM8K_COT_8SHOT.render(question="What is {x}?").endswith("Q: What is {x}?\nA:")


def test_gsm8k_training_response_uses_the_zero_shot_answer_line():
    task = get_task("gsm8k")
    assert task.training_response("So 5 + 5 = 10. The answer is 10.") == "So 5 + 5 = 10.\n#### 10"
    assert task.training_response("3 each. The answer is $1,200.") == "3 each.\n#### 1200"
    assert task.training_response("Half is 2.5. The answer is 2.5.") == "Half is 2.5.\n#### 2.5"
    assert task.training_response("12 * 2 = 24\n#### 24") == "12 * 2 = 24\n#### 24"  # as asked
    assert task.training_response("I am not sure.") == "I am not sure."
    assert get_task("bbh/navigate").training_response("So the answer is Yes.") == \
        "So the answer is Yes."


def test_rationale_is_the_response_without_its_answer_line():
    task = get_task("gsm8k")
    assert task.rationale("12 * 2 = 24\n#### 24") == "12 * 2 = 24"
    assert task.rationale("#### 24") == ""
    assert task.rationale("no answer line") is None
    assert get_task("bbh/navigate").rationale("So the answer is Yes.") is None
