"""Shared by the task tests: a hand-made Example."""

from __future__ import annotations

from teacher.core.tasks import Example


def make_example(task: str, question: str = "", target: str = "") -> Example:
    """An Example of ``task`` with the given question and target (also its answer)."""
    return Example(
        id="t/0", task=task, split="test", question=question, answer=target, target=target
    )
