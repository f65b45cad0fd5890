"""The task registry (teacher.core.tasks.registry): names, lookups, registration."""

from __future__ import annotations

import pkgutil
import sys
from pathlib import Path
from typing import Any

import pytest

import teacher.core.tasks as T
from teacher.core.tasks import BBH_SUBTASKS, Example, Task, get_task, list_tasks, register_task
from teacher.core.tasks import registry as R


class _DemoTask(Task):
    """A task with one hand-made example, for registering in tests."""

    family = "demo"
    output_type = "generate_until"
    splits = ("test",)

    def _load_local(self, split: str, root: Path) -> list[Any]:
        return ["q"]

    def _load_hub(self, split: str) -> list[Any]:
        return ["q"]

    def _example(self, split: str, index: int, row: Any) -> Example:
        return self._new_example(split, index, question=row, answer="a", target="a")


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made in a test are undone after it."""
    monkeypatch.setattr(R, "_FACTORIES", dict(R._FACTORIES))
    monkeypatch.setattr(R, "_TASKS", dict(R._TASKS))


def test_list_tasks() -> None:
    names = list_tasks()
    assert len(names) == 29 == len(set(names))
    assert {"gsm8k", "wikitext-2"} <= set(names)
    assert [n for n in names if n.startswith("bbh/")] == sorted(f"bbh/{s}" for s in BBH_SUBTASKS)
    assert all(get_task(n).name == n for n in names)



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


def test_the_package_imports_every_task_module() -> None:
    # What makes "adding a task = adding a module" true: no list to edit.
    modules = [m.name for m in pkgutil.iter_modules(T.__path__) if not m.name.startswith("_")]
    assert {"gsm8k", "bbh", "wikitext"} <= set(modules)
    assert all(f"teacher.core.tasks.{m}" in sys.modules for m in modules)
    assert {type(get_task(n)).__module__ for n in list_tasks()} == {
        "teacher.core.tasks.gsm8k",
        "teacher.core.tasks.bbh",
        "teacher.core.tasks.wikitext",
    }


def test_get_task_builds_each_task_once() -> None:
    assert get_task("gsm8k") is get_task("gsm8k")
    assert get_task("bbh/navigate").subtask == "navigate"


def test_register_task(scratch_registry: None) -> None:
    assert register_task("demo/one", "demo/two")(_DemoTask) is _DemoTask
    assert {"demo/one", "demo/two"} <= set(list_tasks())
    task = get_task("demo/two")
    assert isinstance(task, _DemoTask) and task.name == "demo/two"
    assert [e.id for e in task.load("test", data_dir=Path(__file__).parent)] == [
        "demo/two/test/000000"
    ]
    with pytest.raises(ValueError, match="did you mean 'demo/one'") as info:
        get_task("one")  # a bare member
    assert "'demo/<subtask>' for the 2 DEMO subtasks" in str(info.value)
    assert "'bbh/<subtask>' for the 27 BBH subtasks" in str(info.value)


def test_register_task_refuses_a_taken_name(scratch_registry: None) -> None:
    with pytest.raises(ValueError, match="'gsm8k' is already registered"):
        register_task("gsm8k")(_DemoTask)
    with pytest.raises(ValueError, match="at least one task name"):
        register_task()


def test_a_factory_must_build_the_registered_name(scratch_registry: None) -> None:
    register_task("demo/mislabelled")(lambda name: _DemoTask("demo/other"))
    with pytest.raises(ValueError, match="built task 'demo/other' for the name 'demo/mislabelled'"):
        get_task("demo/mislabelled")
