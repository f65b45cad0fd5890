"""Ports of lm-evaluation-harness 0.4.13's answer filters and ``exact_match``.

The task modules configure these with the settings of their lm-eval YAML (the
regexes, the ``*_METRIC`` ignores); every rule copied from lm-eval names its source.
A filter returns lm-eval's filtered string, :data:`INVALID` where lm-eval falls back
to it (or ``""`` where lm-eval has no fallback). :func:`normalize_number` is this
project's addition: :meth:`Task.is_correct` compares numbers by value on top of
lm-eval's exact_match (see :func:`canonical_answer`).
"""

from __future__ import annotations

import re
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

# lm_eval/filters/extraction.py RegexFilter's default fallback.
INVALID = "[invalid]"


# --------------------------------------------------------------------------------------
# Regex matching shared by the filters


def _pick_match(
    pattern: re.Pattern[str], text: str, group_select: int, all_groups_empty: str
) -> str | None:
    """``findall``, pick match ``group_select`` (-1 = last), and when the pattern has
    several groups take the first non-empty one (``all_groups_empty`` if none); strip.
    None when nothing matches. The shared core of RegexFilter and find_match."""
    matches = pattern.findall(text)
    if not matches:
        return None
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((g for g in match if g), all_groups_empty)
    return match.strip()


def regex_filter(pattern: re.Pattern[str], text: str, group_select: int = 0) -> str:
    """lm_eval/filters/extraction.py ``RegexFilter`` followed by ``take_first``:
    the picked match (see :func:`_pick_match`), INVALID when nothing matches."""
    match = _pick_match(pattern, text, group_select, INVALID)
    return INVALID if match is None else match


def _find_match(
    pattern: re.Pattern[str],
    text: str,
    group_select: int,
    convert: Mapping[str, str] | None = None,
) -> str:
    """lm_eval/tasks/bbh/cot_zeroshot/utils.py ``ExtendedRegexFilter.find_match``;
    "" when nothing matches."""
    # lm-eval indexes [0] when every group is empty and crashes; treat as no match.
    match = _pick_match(pattern, text, group_select, "") or ""
    if match and convert and match in convert:
        match = convert[match]
    return match


# --------------------------------------------------------------------------------------
# Ignores: what exact_match and the BBH filters strip before comparing


def _strip_unicode_punct(text: str) -> str:
    # ExtendedRegexFilter.punct_tbl removes every code point whose Unicode category
    # starts with "P"; computed per character instead of building a 1.1M-entry table.
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))


# string.punctuation (ASCII), what exact_match strips, unlike the filters' Unicode "P".
_ASCII_PUNCTUATION = str.maketrans("", "", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_DIGITS = str.maketrans("", "", "0123456789")


def _apply_ignores(
    text: str,
    *,
    regexes_to_ignore: Iterable[str] | None = None,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    ignore_numbers: bool = False,
    unicode_punctuation: bool = False,
) -> str:
    """The transform of lm_eval/api/metrics.py ``exact_match_hf_evaluate`` and of
    ``ExtendedRegexFilter.filter_ignores`` (bbh/cot_zeroshot/utils.py, with
    ``unicode_punctuation``): regexes removed in order, then case, punctuation, digits.
    The two differ only in what counts as punctuation."""
    for pattern in regexes_to_ignore or ():
        text = re.sub(pattern, "", text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = (
            _strip_unicode_punct(text)
            if unicode_punctuation
            else text.translate(_ASCII_PUNCTUATION)
        )
    if ignore_numbers:
        text = text.translate(_DIGITS)
    return text


# --------------------------------------------------------------------------------------
# lm_eval/tasks/bbh/cot_zeroshot/utils.py: the "flexible-extract" filters


def multi_choice_filter(text: str, input_text: str | None) -> str:
    """``MultiChoiceRegexFilter`` with the BBH YAML's settings (group_select -1,
    ignore_case, ignore_punctuation, regex ``(\\([A-Z]\\))``).

    1. the last "(X)" in the response; else 2. the last option *text* (parsed from
    the question's "(A) ..." lines) found in the case/punctuation-folded response,
    mapped to its "(X)"; else 3. the last ":<spaces>X" with X an option letter.
    Steps 2-3 need the question (``input_text``); without it only step 1 runs.
    """

    def ignores(s: str) -> str:
        return _apply_ignores(
            s, ignore_case=True, ignore_punctuation=True, unicode_punctuation=True
        )

    match = _find_match(re.compile(r"(\([A-Z]\))"), text, -1)
    if match or input_text is None:
        return match or INVALID
    fallback_regexes: list[str] = []
    choice_to_alpha: dict[str, str] = {}
    letters: list[str] = []
    letter_to_target: dict[str, str] = {}
    next_alpha = "A"
    for choice in re.compile(r"\([A-Z]\)([^\n^(]*)").findall(input_text):
        choice = ignores(choice.strip())
        fallback_regexes.append(re.escape(choice))
        choice_to_alpha[choice] = f"({next_alpha})"
        letters.append(next_alpha)
        letter_to_target[next_alpha] = f"({next_alpha})"
        next_alpha = chr(ord(next_alpha) + 1)
    # Longest first, so an option that is a prefix of another cannot shadow it.
    fallback = re.compile("|".join(sorted(fallback_regexes, key=len, reverse=True)))
    match = _find_match(fallback, ignores(text), -1, choice_to_alpha)
    if not match:
        without_paren = re.compile(rf":[\s]*({'|'.join(letters)})")
        match = _find_match(without_paren, text, -1, letter_to_target)
    return match or INVALID


# NumberParseRegexFilter's English number-words pattern. lm-eval compiles it with the
# third-party `regex` module; its "(?|" branch-reset groups hold no captures, so they
# are plain "(?:" groups and the stdlib `re` matches the same strings.
_ENGLISH_NUMBER = re.compile(
    (
        "((?:(?:zero|one|two|three|four|five|(?:twen|thir|for|fif|six|seven|nine)(?|teen|ty)"
        "|eight(?:|een|y)|ten|eleven|twelve|fourteen|hundred|thousand|(?:m|b|tr)illion)"
        "(?:zero|one|two|three|four|five|(?:twen|thir|for|fif|six|seven|nine)(?:|teen|ty)"
        "|eight(?|een|y)|ten|eleven|twelve|fourteen|hundred|thousand|(?:m|b|tr)illion"
        "|[^\\S\r\n]|,|and|&)+)?(?:zero|one|two|three|four|five"
        "|(?:twen|thir|for|fif|six|seven|nine)(?|teen|ty)|eight(?|een|y)|ten|eleven|twelve"
        "|fourteen|hundred|thousand|(?:m|b|tr)illion))"
    ).replace("(?|", "(?:")
)

# word2number 1.1 (w2n.py), which NumberParseRegexFilter calls; ported because it is
# not a dependency here.
_W2N_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_W2N_TEENS = (
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_W2N_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_W2N: dict[str, int] = {
    **{w: i for i, w in enumerate(_W2N_DIGITS + _W2N_TEENS)},
    **{w: 10 * i for i, w in enumerate(_W2N_TENS, start=2)},
    "hundred": 100,
    "thousand": 1000,
    "million": 1_000_000,
    "billion": 1_000_000_000,
}


def _w2n_formation(words: Sequence[str]) -> int:
    """w2n ``number_formation``."""
    n = [_W2N[w] for w in words]
    if len(n) == 4:
        return n[0] * n[1] + n[2] + n[3]
    if len(n) == 3:
        return n[0] * n[1] + n[2]
    if len(n) == 2:
        return n[0] * n[1] if 100 in n else n[0] + n[1]
    return n[0]  # IndexError on [], as in w2n


def _word_to_num(sentence: str) -> int | float:
    """w2n ``word_to_num``; raises ValueError/IndexError where w2n raises."""
    sentence = sentence.replace("-", " ").lower()
    if sentence.isdigit():
        return int(sentence)
    words = [w for w in sentence.strip().split() if w in _W2N or w == "point"]
    if not words:
        raise ValueError("no number words")
    if any(words.count(w) > 1 for w in ("thousand", "million", "billion", "point")):
        raise ValueError("redundant number word")
    decimals: list[str] = []
    if "point" in words:
        i = words.index("point")
        words, decimals = words[:i], words[i + 1 :]
    b = words.index("billion") if "billion" in words else -1
    m = words.index("million") if "million" in words else -1
    t = words.index("thousand") if "thousand" in words else -1
    if (t > -1 and (t < m or t < b)) or (m > -1 and m < b):
        raise ValueError("malformed number")
    total: int | float = 0
    if len(words) == 1:
        total += _W2N[words[0]]
    elif words:
        if b > -1:
            total += _w2n_formation(words[:b]) * 1_000_000_000
        if m > -1:
            total += _w2n_formation(words[b + 1 : m] if b > -1 else words[:m]) * 1_000_000
        if t > -1:
            start = m + 1 if m > -1 else b + 1 if b > -1 else 0
            total += _w2n_formation(words[start:t]) * 1000
        last = len(words) - 1
        if t > -1 and t != last:
            total += _w2n_formation(words[t + 1 :])
        elif m > -1 and m != last:
            total += _w2n_formation(words[m + 1 :])
        elif b > -1 and b != last:
            total += _w2n_formation(words[b + 1 :])
        elif t == m == b == -1:
            total += _w2n_formation(words)
    # w2n get_decimal_sum: digit words only, else the fraction counts as 0.
    if decimals and all(w in _W2N_DIGITS for w in decimals):
        total += float("0." + "".join(str(_W2N[w]) for w in decimals))
    return total


def number_parse_filter(text: str) -> str:
    """``NumberParseRegexFilter`` with the YAML's regex ``([-0-9]+)``, group_select -1:
    the last run of digits/hyphens; else the last English number phrase, as digits.

    Where w2n would raise (lm-eval then crashes) this returns INVALID instead.
    """
    match = _find_match(re.compile(r"([-0-9]+)"), text, -1)
    if not match:
        words = _find_match(_ENGLISH_NUMBER, text.lower(), -1)
        if words:
            try:
                match = str(_word_to_num(words))
            except (ValueError, IndexError, KeyError):
                match = ""
    return match or INVALID


def map_regex_filter(text: str, pattern_to_value: Mapping[str, str]) -> str:
    """``MapRegexFilter`` (group_select -1, ignore_case): find the last match of any
    pattern, then map it to the value of the first pattern that matches it."""
    whole = _find_match(re.compile("|".join(pattern_to_value)), text.lower(), -1)
    if whole:
        for pattern, value in pattern_to_value.items():
            if _find_match(re.compile(pattern), whole.lower(), -1):
                return value
    return INVALID


def word_sort_filter(text: str, input_text: str | None) -> str:
    """``WordSortFilter``: the question's words in the order of their last mention.

    Words are joined into the regex unescaped, as lm-eval does. Returns "" (lm-eval
    has no fallback here) when none is mentioned, INVALID without the question.
    """
    if input_text is None or "List:" not in input_text:
        return INVALID
    words = input_text.split("List:")[1].strip().split()
    found = re.compile("|".join(rf"\b{w}\b" for w in words)).findall(text)
    found.reverse()
    return " ".join(reversed(OrderedDict.fromkeys(found)))


# --------------------------------------------------------------------------------------
# lm-eval exact_match and number normalisation


def exact_match(
    prediction: str,
    reference: str,
    *,
    regexes_to_ignore: Iterable[str] | None = None,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    ignore_numbers: bool = False,
) -> bool:
    """lm_eval/api/metrics.py ``exact_match_hf_evaluate`` for one pair: both strings
    get the same ignores (regexes removed in order, then case, punctuation, digits),
    then compare equal. Pass e.g. ``**GSM8K_METRIC``."""
    opts = {
        "regexes_to_ignore": tuple(regexes_to_ignore or ()),
        "ignore_case": ignore_case,
        "ignore_punctuation": ignore_punctuation,
        "ignore_numbers": ignore_numbers,
    }
    return _apply_ignores(prediction, **opts) == _apply_ignores(reference, **opts)


_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def normalize_number(text: str) -> str | None:
    """Canonical form of a number as written in an answer, or None if not a number.

    Drops thousands separators and ``$``, one trailing period and trailing zeros:
    ``"1,234"`` -> ``"1234"``, ``"$5"``/``"5."``/``"5.0"``/``"+5"`` -> ``"5"``,
    ``"-0.50"`` -> ``"-0.5"``. Exact (Decimal), so large integers stay exact.
    """
    s = text.strip().replace(",", "").replace("$", "")
    if s.endswith("."):
        s = s[:-1]
    if not _NUMBER.fullmatch(s):
        return None
    d = Decimal(s)
    if d == 0:
        return "0"  # also "-0", "0.00"
    return format(d.normalize(), "f")


def canonical_answer(text: str, metric: Mapping[str, Any]) -> str:
    """lm-eval's exact_match transform under ``metric`` (a ``*_METRIC`` dict), then
    number normalisation if it is a number: what :meth:`Task.is_correct` compares."""
    text = _apply_ignores(text, **metric)
    return normalize_number(text) or text
