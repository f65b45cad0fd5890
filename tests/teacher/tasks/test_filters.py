"""The lm-eval filter ports and number normalisation (teacher.core.tasks.filters)."""

from __future__ import annotations

import re

import pytest

from teacher.core.tasks import (
    INVALID,
    bbh_cot_fewshot_get_answer,
    bbh_cot_zeroshot_strict_match,
    exact_match,
    normalize_number,
)
from teacher.core.tasks import filters as F

MC_QUESTION = "Which?\nOptions:\n(A) carrot\n(B) apple pie\n(C) apple\n(D) rock"


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


def test_regex_filter_and_find_match_fall_back_differently() -> None:
    # RegexFilter and ExtendedRegexFilter.find_match share their matching, not their
    # fallbacks: a whitespace-only match is "" for both; no match, or a match whose
    # groups are all empty, is INVALID for RegexFilter and "" for find_match.
    assert bbh_cot_fewshot_get_answer("So the answer is  .") == ""
    assert bbh_cot_fewshot_get_answer("no answer") == INVALID
    assert bbh_cot_zeroshot_strict_match("The answer is x") == INVALID  # groups all ""
    empty_groups = re.compile(r"(a)|(b)?")
    assert F.regex_filter(empty_groups, "c") == INVALID
    assert F._find_match(empty_groups, "c", -1) == ""
    assert F._find_match(re.compile(r"(x)"), "no match", -1) == ""
    assert F._find_match(re.compile(r"(a)"), "a", -1, {"a": "(A)"}) == "(A)"


def test_exact_match_and_filters_differ_in_what_is_punctuation() -> None:
    # exact_match strips ASCII string.punctuation only; the BBH filters every Unicode
    # "P" category ("·" is Po), so the option text is found in the response.
    assert exact_match("ap.ple", "apple", ignore_punctuation=True)
    assert not exact_match("ap·ple", "apple", ignore_punctuation=True)
    assert F.multi_choice_filter("It is ap·ple", MC_QUESTION) == "(C)"
    assert F.multi_choice_filter("It is ap·ple", None) == INVALID  # needs the options
    assert exact_match("A1b2", "ab", ignore_numbers=True, ignore_case=True)
