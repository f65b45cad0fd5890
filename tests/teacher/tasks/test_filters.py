"""The lm-eval filter ports and number normalisation (teacher.core.tasks.filters)."""

from __future__ import annotations

import pytest

from teacher.core.tasks import normalize_number


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
