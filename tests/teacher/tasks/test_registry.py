"""The task registry (teacher.core.tasks.registry): names, lookups, registration."""

from __future__ import annotations

import pytest

from teacher.core.tasks import BBH_SUBTASKS, get_task, list_tasks


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
