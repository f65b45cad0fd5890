"""The task registry: task modules register themselves by name, callers look them up.

In the style of lm-evaluation-harness's registries (``register_model(*names)`` in
lm_eval/api/registry.py): a decorator adds a factory under one or more names and
refuses a name that is taken. Each task module decorates its Task class (or a small
factory) with :func:`register_task`; the package imports every task module (see
``teacher/core/tasks/__init__.py``), so adding a task never means editing a list.
Tasks are built on first lookup and then shared, one instance per name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from teacher.core.config import did_you_mean, suggestion
from teacher.core.tasks.base import Task

TaskFactory = Callable[[str], Task]  # called with the registered name
F = TypeVar("F", bound=TaskFactory)

# name -> factory, in registration order; name -> the built task.
_FACTORIES: dict[str, TaskFactory] = {}
_TASKS: dict[str, Task] = {}


def register_task(*names: str) -> Callable[[F], F]:
    """Register a Task class (or any ``factory(name) -> Task``) under ``names``.

    ``get_task(name)`` returns ``factory(name)``, built once. A name may hold a
    family prefix, ``"<family>/<member>"`` (``"bbh/navigate"``); lookups suggest such
    names for the bare member or an lm-eval style ``"<family>_..._<member>"``.
    """
    if not names:
        raise ValueError("register_task needs at least one task name")

    def decorate(factory: F) -> F:
        for name in names:
            if name in _FACTORIES:
                raise ValueError(
                    f"task {name!r} is already registered (by {_FACTORIES[name]!r}); "
                    f"register {factory!r} under another name"
                )
            _FACTORIES[name] = factory
        return factory

    return decorate


def list_tasks() -> list[str]:
    """Every task name: ``"gsm8k"``, ``"bbh/<subtask>"`` (27) and ``"wikitext-2"``."""
    return sorted(_FACTORIES)


def get_task(name: str) -> Task:
    """The task called ``name``; unknown names raise ValueError with suggestions."""
    task = _TASKS.get(name)
    if task is not None:
        return task
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(_unknown_task_message(name))
    task = factory(name)
    if task.name != name:  # ids and records carry task.name: it must be the lookup key
        raise ValueError(f"{factory!r} built task {task.name!r} for the name {name!r}")
    _TASKS[name] = task
    return task


def _unknown_task_message(name: str) -> str:
    names = list_tasks()
    hint = did_you_mean(name, names, n=3) or suggestion(_member_matches(name, names))
    return f"unknown task {name!r}{hint} (known: {_known_summary()}; see list_tasks())"


def _member_matches(name: str, names: list[str]) -> list[str]:
    """Family members ``name`` spells another way: a bare member ("navigate" for
    "bbh/navigate"), else an lm-eval style name ("bbh_cot_fewshot_navigate"), which
    starts with the family and ends with the member."""
    members = [n.split("/", 1) for n in names if "/" in n]  # [family, member]
    bare = [f"{family}/{member}" for family, member in members if member == name]
    return bare or [
        f"{family}/{member}"
        for family, member in members
        if name.startswith(family) and name.endswith(member)
    ][:3]


def _known_summary() -> str:
    """The registered names in short, in registration order: a family counts once,
    as ``'bbh/<subtask>' for the 27 BBH subtasks``."""
    counts: dict[str, int] = {}  # a plain name -> 0; "<family>/" -> its member count
    for name in _FACTORIES:
        family, sep, _ = name.partition("/")
        key = f"{family}/" if sep else name
        counts[key] = counts.get(key, 0) + (1 if sep else 0)
    return ", ".join(
        f"'{key}<subtask>' for the {count} {key[:-1].upper()} subtasks"
        if key.endswith("/")
        else repr(key)
        for key, count in counts.items()
    )
