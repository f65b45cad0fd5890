"""The config loader's shared pieces (teacher.core.config)."""

from __future__ import annotations

import pytest

from teacher.core.config import did_you_mean, suggestion


@pytest.mark.parametrize(
    ("name", "known", "n", "hint"),
    [
        ("limt", ["limit", "seed"], 1, "; did you mean 'limit'?"),
        ("gsm8", ["gsm8k", "gsm8k-cot"], 2, "; did you mean 'gsm8k' or 'gsm8k-cot'?"),
        ("zzzz", ["limit"], 1, ""),
    ],
)
def test_did_you_mean(name: str, known: list[str], n: int, hint: str) -> None:
    assert did_you_mean(name, known, n) == hint


def test_suggestion_of_chosen_candidates() -> None:
    assert suggestion(["bbh/navigate"]) == "; did you mean 'bbh/navigate'?"
    assert suggestion([]) == ""
