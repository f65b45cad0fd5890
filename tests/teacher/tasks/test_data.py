"""Data loading (teacher.core.tasks.data): the data directory, file checks, the hub.

Errors must name the file and line and say how to fix them; the hub is faked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from teacher.core.tasks import DataFormatError, default_data_dir, get_task
from teacher.core.tasks import data as D


def test_default_data_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(D.DATA_DIR_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.setenv(D.DATA_DIR_ENV, str(tmp_path / "missing"))
    assert default_data_dir() == tmp_path / "missing"  # returned as is; load then fails


def test_default_data_dir_finds_shared(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)
    found = default_data_dir()
    # data.py is one folder deeper than the old tasks.py: its repo root must still be ours.
    assert D._repo_root() == Path(__file__).resolve().parents[3]
    repo_shared = D._repo_root().parent / "shared" / "data"
    if repo_shared.is_dir():
        assert found == repo_shared.resolve()


def test_missing_data_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="data directory not found") as info:
        get_task("gsm8k").load("test", data_dir=missing)
    assert str(missing) in str(info.value)


def test_missing_data_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(D.DATA_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=re.escape(f"${D.DATA_DIR_ENV}")):
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

    monkeypatch.setattr(D, "default_data_dir", lambda: None)
    monkeypatch.setattr(D, "_datasets", lambda: NoHub)
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

    monkeypatch.setattr(D, "default_data_dir", lambda: None)
    monkeypatch.setattr(D, "_datasets", lambda: FakeHub)
    [doc] = get_task("wikitext-2").load("validation")
    assert calls == [("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "validation")]
    assert doc.answer == " = T =\nHi-there.\n"
