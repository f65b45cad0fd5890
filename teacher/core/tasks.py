"""Benchmark task registry: GSM8K, the 27 BIG-Bench-Hard subtasks and WikiText-2.

Owned by ``teacher`` and shared by data generation, student training and eval, so
that all three load the same examples (with the same stable ids), build the same
prompts (see :mod:`teacher.core.templates`) and score answers the same way.

Modelled on lm-evaluation-harness 0.4.13 (``lm_eval``); every rule copied from it
names its source file. Where this module departs from lm-eval it says so:

* ``Task.is_correct`` is lm-eval's ``exact_match`` plus number normalisation
  (``"1,234"`` == ``"1234"``, ``"$5"`` == ``"5"``, ``"5."`` == ``"5.0"`` == ``"5"``),
  so it accepts a superset of what lm-eval accepts. For lm-eval's exact numbers,
  use the raw filter functions (``gsm8k_strict_match`` ...) with :func:`exact_match`
  and the ``*_METRIC`` settings.
* Extraction returns ``None`` where lm-eval's filters return the ``"[invalid]"``
  fallback (or an empty string).

Data comes from a local directory laid out like ``/work/shared/data`` (``gsm8k/``,
``bbh/``, ``wikitext-2/``) or, when there is none, from the Hugging Face hub ids that
lm-eval uses. Importing this module is cheap: ``datasets`` is imported on first load,
and nothing here needs torch.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import unicodedata
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Literal

from teacher.core.templates import (
    BBH_COT_3SHOT,
    BBH_COT_ZEROSHOT,
    GSM8K_COT_8SHOT,
    GSM8K_COT_ZEROSHOT,
    Template,
    get_template,
)

__all__ = [
    "BBH_COT_FEWSHOT_METRIC",
    "BBH_COT_ZEROSHOT_METRIC",
    "BBH_HUB_ID",
    "BBH_SUBTASKS",
    "DATA_DIR_ENV",
    "GSM8K_HUB_CONFIG",
    "GSM8K_HUB_ID",
    "GSM8K_METRIC",
    "INVALID",
    "WIKITEXT_HUB_CONFIG",
    "WIKITEXT_HUB_ID",
    "BbhTask",
    "DataFormatError",
    "Example",
    "Gsm8kTask",
    "Task",
    "WikitextTask",
    "bbh_cot_fewshot_get_answer",
    "bbh_cot_zeroshot_strict_match",
    "bbh_flexible_extract",
    "default_data_dir",
    "exact_match",
    "get_task",
    "gsm8k_cot_strict_match",
    "gsm8k_flexible_extract",
    "gsm8k_strict_match",
    "list_tasks",
    "normalize_number",
    "wikitext_detokenizer",
    "wikitext_documents",
    "wikitext_units",
]

DATA_DIR_ENV = "DISTILL_DATA_DIR"

# The hub datasets lm-eval 0.4.13 reads (dataset_path / dataset_name in its YAML).
GSM8K_HUB_ID, GSM8K_HUB_CONFIG = "openai/gsm8k", "main"  # lm_eval/tasks/gsm8k/gsm8k.yaml
# lm_eval/tasks/bbh/cot_fewshot/_cot_fewshot_template_yaml (0.4.13 moved off lukaemon/bbh;
# same "input"/"target" columns, one "test" split per subtask config).
BBH_HUB_ID = "SaylorTwift/bbh"
# The CoT exemplar files are not part of the hub dataset (lm-eval inlines them in its
# YAML); without a local data dir they are read from the BIG-Bench-Hard repository.
BBH_COT_PROMPTS_URL = (
    "https://raw.githubusercontent.com/suzgunmirac/BIG-Bench-Hard/main/cot-prompts/{subtask}.txt"
)
WIKITEXT_HUB_ID = "EleutherAI/wikitext_document_level"  # lm_eval/tasks/wikitext/wikitext.yaml
WIKITEXT_HUB_CONFIG = "wikitext-2-raw-v1"

# lm_eval/tasks/bbh/cot_fewshot/_bbh_cot_fewshot.yaml, in that order.
BBH_SUBTASKS: tuple[str, ...] = (
    "boolean_expressions",
    "causal_judgement",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "multistep_arithmetic_two",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
    "web_of_lies",
    "word_sorting",
)

# lm_eval/filters/extraction.py RegexFilter's default fallback.
INVALID = "[invalid]"

Messages = list[dict[str, str]]
PathLike = str | os.PathLike[str]


class DataFormatError(ValueError):
    """A data file is malformed; the message starts with ``<path>:<line>:``."""


@dataclass(frozen=True)
class Example:
    """One benchmark item, the same for data generation, training and eval.

    ``id`` is stable across runs and unique across tasks: ``<task>/<split>/<index:06d>``,
    the index being the record's position in its (fixed) source file.
    """

    id: str
    task: str
    split: str
    question: str  # what the model is asked (empty for wikitext)
    answer: str  # the full reference, e.g. GSM8K's rationale + "#### 42"
    target: str  # the final answer alone, e.g. "42" (empty for wikitext)
    # The source text before preprocessing, where it differs from `answer`: for
    # wikitext the tokenized page, on which lm-eval counts words and bytes for
    # word/byte perplexity (see wikitext_units). Empty otherwise.
    raw: str = ""


# --------------------------------------------------------------------------------------
# Data directory


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_data_dir() -> Path | None:
    """Where benchmark data lives: ``$DISTILL_DATA_DIR``, else ``../shared/data``.

    ``../shared/data`` is tried relative to the repository root, then to the current
    directory, and used if it exists. ``None`` means "no local data: use the hub".
    A set ``$DISTILL_DATA_DIR`` is returned even if missing, so that a typo fails
    loudly at load time instead of silently falling back to the network.
    """
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    for base in (_repo_root(), Path.cwd()):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _resolve_data_dir(data_dir: PathLike | None) -> Path | None:
    """The local data root to read, or None for the hub; raises if it is missing."""
    if data_dir is not None:
        root, origin = Path(data_dir).expanduser(), "data_dir"
    else:
        root = default_data_dir()
        if root is None:
            return None
        origin = f"${DATA_DIR_ENV}" if os.environ.get(DATA_DIR_ENV, "").strip() else "default"
    if not root.is_dir():
        raise FileNotFoundError(
            f"data directory not found: {root} (from {origin}); pass data_dir=, set "
            f"${DATA_DIR_ENV}, or unset it to use ../shared/data or the Hugging Face hub"
        )
    return root


def _datasets() -> Any:
    # Imported lazily: `datasets` pulls in pyarrow/pandas, which callers that only
    # need prompts or answer extraction should not pay for.
    import datasets

    return datasets


def _load_hub(task: str, split: str, path: str, name: str | None) -> list[dict[str, Any]]:
    try:
        ds = _datasets().load_dataset(path, name, split=split)
    except Exception as e:  # network, auth, missing config: all mean "no data"
        raise RuntimeError(
            f"could not load {task} split {split!r} from the Hugging Face hub "
            f"({path}, {name}): {e}. No local data directory was found: pass data_dir= "
            f"or set ${DATA_DIR_ENV}"
        ) from e
    return ds.to_list()


def _validate_jsonl(path: Path, required: Sequence[str]) -> int:
    """Check every line of a JSONL file; returns the number of records.

    datasets' own errors on a bad line name neither the file nor the line, so the
    file is parsed here first (cheap: GSM8K is 4 MB) and problems reported as
    ``<path>:<line>: ...``. Blank lines are skipped, as datasets' reader does.
    """
    count = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(
                    f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})"
                ) from None
            if not isinstance(obj, dict):
                raise DataFormatError(
                    f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}"
                )
            for key in required:
                if not isinstance(obj.get(key), str):
                    raise DataFormatError(f"{path}:{lineno}: field {key!r} missing or not a string")
            count += 1
    if count == 0:
        raise DataFormatError(f"{path}: no records")
    return count


def _load_local_jsonl(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    expected = _validate_jsonl(path, required)
    rows = _datasets().load_dataset("json", data_files=str(path), split="train").to_list()
    if len(rows) != expected:  # a parser disagreement would shift every id after it
        raise DataFormatError(f"{path}: read {len(rows)} records, expected {expected}")
    return rows


# --------------------------------------------------------------------------------------
# lm-eval filters (ports). Each returns lm-eval's filtered string, INVALID on no match.


def _regex_filter(pattern: re.Pattern[str], text: str, group_select: int = 0) -> str:
    """lm_eval/filters/extraction.py ``RegexFilter`` followed by ``take_first``.

    ``findall``, pick match ``group_select`` (-1 = last), and when the pattern has
    several groups take the first non-empty one; strip.
    """
    matches = pattern.findall(text)
    if not matches:
        return INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        groups = [g for g in match if g]
        match = groups[0] if groups else INVALID
    return match.strip()


# lm_eval/tasks/gsm8k/gsm8k.yaml, filter "strict-match".
_GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
# lm_eval/tasks/gsm8k/gsm8k-cot.yaml (and gsm8k-cot-zeroshot.yaml), filter "strict-match".
# The final "." is the regex wildcard, as in lm-eval: it needs one more character.
_GSM8K_COT_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
# gsm8k.yaml / gsm8k-cot.yaml, filter "flexible-extract" (group_select -1).
_GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def gsm8k_strict_match(text: str) -> str:
    """lm-eval ``gsm8k`` "strict-match": the number after ``#### ``."""
    return _regex_filter(_GSM8K_STRICT, text)


def gsm8k_cot_strict_match(text: str) -> str:
    """lm-eval ``gsm8k_cot`` "strict-match": the number in ``The answer is N.``."""
    return _regex_filter(_GSM8K_COT_STRICT, text)


def gsm8k_flexible_extract(text: str) -> str:
    """lm-eval gsm8k "flexible-extract": the last number-like run in the text."""
    return _regex_filter(_GSM8K_FLEXIBLE, text, group_select=-1)


# lm_eval/tasks/bbh/cot_fewshot/_cot_fewshot_template_yaml, filter "get-answer": the
# rest of the line after "the answer is ", minus its last character (the period).
_BBH_GET_ANSWER = re.compile(r"(?<=the answer is )(.*)(?=.)")
# lm_eval/tasks/bbh/cot_zeroshot/<subtask>.yaml, filter "strict-match".
_BBH_ZEROSHOT_STRICT = re.compile(
    r"((?<=The answer is )(.*)(?=.)|(?<=the answer is )(.*)(?=.)"
    r"|(?<=The answer: )(.*)(?=.)|(?<=The final answer: )(.*)(?=.))"
)


def bbh_cot_fewshot_get_answer(text: str) -> str:
    """lm-eval ``bbh_cot_fewshot_*`` "get-answer" (the only filter those tasks have)."""
    return _regex_filter(_BBH_GET_ANSWER, text)


def bbh_cot_zeroshot_strict_match(text: str) -> str:
    """lm-eval ``bbh_cot_zeroshot_*`` "strict-match"."""
    return _regex_filter(_BBH_ZEROSHOT_STRICT, text)


# ---- lm_eval/tasks/bbh/cot_zeroshot/utils.py: the "flexible-extract" filters ----------


def _strip_unicode_punct(text: str) -> str:
    # ExtendedRegexFilter.punct_tbl removes every code point whose Unicode category
    # starts with "P"; computed per character instead of building a 1.1M-entry table.
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))


def _filter_ignores(
    text: str,
    *,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    regexes_to_ignore: Sequence[str] | None = None,
) -> str:
    """``ExtendedRegexFilter.filter_ignores``."""
    for pattern in regexes_to_ignore or ():
        text = re.sub(pattern, "", text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = _strip_unicode_punct(text)
    return text


def _find_match(
    pattern: re.Pattern[str],
    text: str,
    group_select: int,
    convert: Mapping[str, str] | None = None,
) -> str:
    """``ExtendedRegexFilter.find_match``; "" when nothing matches."""
    matches = pattern.findall(text)
    if not matches:
        return ""
    match = matches[group_select]
    if isinstance(match, tuple):
        groups = [g for g in match if g]
        # lm-eval indexes [0] here and crashes when every group is empty; treat as no match.
        match = groups[0] if groups else ""
    match = match.strip()
    if match and convert and match in convert:
        match = convert[match]
    return match


def _multi_choice_filter(text: str, input_text: str | None) -> str:
    """``MultiChoiceRegexFilter`` with the BBH YAML's settings (group_select -1,
    ignore_case, ignore_punctuation, regex ``(\\([A-Z]\\))``).

    1. the last "(X)" in the response; else 2. the last option *text* (parsed from
    the question's "(A) ..." lines) found in the case/punctuation-folded response,
    mapped to its "(X)"; else 3. the last ":<spaces>X" with X an option letter.
    Steps 2-3 need the question (``input_text``); without it only step 1 runs.
    """

    def ignores(s: str) -> str:
        return _filter_ignores(s, ignore_case=True, ignore_punctuation=True)

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


def _number_parse_filter(text: str) -> str:
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


def _map_regex_filter(text: str, pattern_to_value: Mapping[str, str]) -> str:
    """``MapRegexFilter`` (group_select -1, ignore_case): find the last match of any
    pattern, then map it to the value of the first pattern that matches it."""
    whole = _find_match(re.compile("|".join(pattern_to_value)), text.lower(), -1)
    if whole:
        for pattern, value in pattern_to_value.items():
            if _find_match(re.compile(pattern), whole.lower(), -1):
                return value
    return INVALID


def _word_sort_filter(text: str, input_text: str | None) -> str:
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


def _regex(pattern: str) -> Callable[[str, str | None], str]:
    compiled = re.compile(pattern)
    return lambda text, _input: _regex_filter(compiled, text, group_select=-1)


def _mapped(pattern_to_value: Mapping[str, str]) -> Callable[[str, str | None], str]:
    return lambda text, _input: _map_regex_filter(text, pattern_to_value)


_MULTI_CHOICE = (
    "date_understanding",
    "disambiguation_qa",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
)

# Per subtask, the first step of "flexible-extract" in lm_eval/tasks/bbh/cot_zeroshot/
# <subtask>.yaml; each takes (response, question input).
_BBH_FLEXIBLE: dict[str, Callable[[str, str | None], str]] = {
    "boolean_expressions": _regex(r"\b(True|False)\b"),
    "causal_judgement": _regex(r"\b(Yes|No|yes|no)\b"),
    "dyck_languages": _regex(r"(?<= )([\" \[\(<{}>\)\]]+)|([\" \[\(<{}>\)\]]+)"),
    "formal_fallacies": _regex(r"\b(valid|invalid)\b"),
    "navigate": _regex(r"\b(Yes|No|yes|no)\b"),
    "multistep_arithmetic_two": lambda text, _input: _number_parse_filter(text),
    "object_counting": lambda text, _input: _number_parse_filter(text),
    "sports_understanding": _mapped(
        {r"\b(no|not plausible)\b": "no", r"\b(yes|plausible)\b": "yes"}
    ),
    "web_of_lies": _mapped(
        {
            r"\b(no|does not tell the truth|is not telling the truth)\b": "no",
            r"\b(yes|tells the truth|is telling the truth)\b": "yes",
        }
    ),
    "word_sorting": _word_sort_filter,
    **{name: _multi_choice_filter for name in _MULTI_CHOICE},
}


def bbh_flexible_extract(subtask: str, text: str, input_text: str | None = None) -> str:
    """lm-eval ``bbh_cot_zeroshot_<subtask>`` "flexible-extract" for one response.

    ``input_text`` is the question (``doc["input"]``), which the multiple-choice and
    word-sorting filters read their options/words from.
    """
    try:
        extract = _BBH_FLEXIBLE[subtask]
    except KeyError:
        raise ValueError(f"unknown BBH subtask {subtask!r}") from None
    return extract(text, input_text)


# --------------------------------------------------------------------------------------
# lm-eval exact_match and number normalisation


# lm_eval/tasks/gsm8k/gsm8k.yaml (and gsm8k-cot.yaml) metric_list exact_match.
GSM8K_METRIC: dict[str, Any] = {
    "ignore_case": True,
    "ignore_punctuation": False,
    "regexes_to_ignore": (",", "\\$", "(?s).*#### ", "\\.$"),
}
# lm_eval/tasks/bbh/cot_fewshot/_cot_fewshot_template_yaml: plain exact_match (its
# ignore_case / ignore_punctuation lines are commented out).
BBH_COT_FEWSHOT_METRIC: dict[str, Any] = {}
# lm_eval/tasks/bbh/cot_zeroshot/_cot_zeroshot_template_yaml.
BBH_COT_ZEROSHOT_METRIC: dict[str, Any] = {
    "ignore_case": True,
    "regexes_to_ignore": ("\\.$", ",", "\\\\", "\n", '"'),
}


def _exact_match_transform(
    text: str,
    *,
    regexes_to_ignore: Iterable[str] | None = None,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    ignore_numbers: bool = False,
) -> str:
    for pattern in regexes_to_ignore or ():
        text = re.sub(pattern, "", text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        # string.punctuation (ASCII), unlike the filters' Unicode "P" categories.
        text = text.translate(str.maketrans("", "", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"))
    if ignore_numbers:
        text = text.translate(str.maketrans("", "", "0123456789"))
    return text


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
    return _exact_match_transform(prediction, **opts) == _exact_match_transform(reference, **opts)


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


def _canonical(text: str, metric: Mapping[str, Any]) -> str:
    """lm-eval's exact_match transform, then number normalisation if it is a number."""
    text = _exact_match_transform(text, **metric)
    return normalize_number(text) or text


# --------------------------------------------------------------------------------------
# WikiText (ports)


def wikitext_detokenizer(page: str) -> str:
    """lm_eval/tasks/wikitext/preprocess_wikitext.py ``wikitext_detokenizer`` (takes
    the page string instead of the doc dict)."""
    string = page
    # contractions
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    # number separators
    string = string.replace(" @-@ ", "-")
    string = string.replace(" @,@ ", ",")
    string = string.replace(" @.@ ", ".")
    # punctuation
    string = string.replace(" : ", ": ")
    string = string.replace(" ; ", "; ")
    string = string.replace(" . ", ". ")
    string = string.replace(" ! ", "! ")
    string = string.replace(" ? ", "? ")
    string = string.replace(" , ", ", ")
    # double brackets
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    # miscellaneous
    string = string.replace("= = = =", "====")
    string = string.replace("= = =", "===")
    string = string.replace("= =", "==")
    string = string.replace(" " + chr(176) + " ", chr(176))
    string = string.replace(" \n", "\n")
    string = string.replace("\n ", "\n")
    string = string.replace(" N ", " 1 ")
    string = string.replace(" 's", "'s")
    return string


def wikitext_documents(text: str) -> list[str]:
    """Split a WikiText file into articles, as the ``EleutherAI/wikitext_document_level``
    builder (``_generate_examples``) that lm-eval's ``wikitext`` task reads does: a new
    page starts at each top-level heading line `` = Title = ``; a page that is only
    whitespace is dropped, except the last one, which is always kept."""
    pages: list[str] = []
    lines: list[str] = []
    for line in text.split("\n"):
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" ="):
            page = "\n".join(lines)
            if page.strip():
                pages.append(page)
            lines = []
        lines.append(line)
    pages.append("\n".join(lines))
    return pages


def wikitext_units(page: str) -> tuple[int, int]:
    """(words, bytes) of the *original* page, the denominators of lm-eval's
    word_perplexity and byte_perplexity / bits_per_byte
    (lm_eval/tasks/wikitext/preprocess_wikitext.py ``process_results``)."""
    return len(re.split(r"\s+", page)), len(page.encode("utf-8"))


# --------------------------------------------------------------------------------------
# Tasks


class Task(ABC):
    """One benchmark: loading, prompting, answer extraction and scoring.

    ``output_type`` follows lm-eval: ``"generate_until"`` tasks are scored on
    generated text; ``"loglikelihood_rolling"`` (wikitext) on perplexity, and have
    no answers to extract.
    """

    name: str
    family: ClassVar[str]  # the template family, Template.task
    splits: tuple[str, ...]
    output_type: ClassVar[Literal["generate_until", "loglikelihood_rolling"]]
    default_template: Template | None = None
    zeroshot_template: Template | None = None
    fewshot_template: Template | None = None

    # ---- loading

    def load(
        self, split: str, data_dir: PathLike | None = None, limit: int | None = None
    ) -> list[Example]:
        """The examples of ``split`` in file order (the first ``limit`` if given).

        Reads ``data_dir`` if given, else :func:`default_data_dir`, else the hub.
        """
        if split not in self.splits:
            raise ValueError(
                f"unknown split {split!r} for task {self.name!r}; splits: {list(self.splits)}"
            )
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
        root = _resolve_data_dir(data_dir)
        rows = self._load_local(split, root) if root is not None else self._load_hub(split)
        if limit is not None:
            rows = rows[:limit]
        return [self._example(split, i, row) for i, row in enumerate(rows)]

    def _task_dir(self, root: Path, sub: str) -> Path:
        path = root / sub
        if not path.is_dir():
            raise FileNotFoundError(
                f"task directory not found: {path} ({self.name} data is expected under "
                f"the data directory {root})"
            )
        return path

    def _split_file(self, path: Path, split: str) -> Path:
        if not path.is_file():
            raise FileNotFoundError(f"no data for {self.name} split {split!r}: {path} not found")
        return path

    def _id(self, split: str, index: int) -> str:
        return f"{self.name}/{split}/{index:06d}"

    @abstractmethod
    def _load_local(self, split: str, root: Path) -> list[Any]: ...

    @abstractmethod
    def _load_hub(self, split: str) -> list[Any]: ...

    @abstractmethod
    def _example(self, split: str, index: int, row: Any) -> Example: ...

    # ---- prompting

    def templates(self) -> list[Template]:
        """The templates this task can render."""
        return [t for t in (self.zeroshot_template, self.fewshot_template) if t is not None]

    def _pick_template(self, template: str | Template | None, fewshot: bool | None) -> Template:
        if template is not None and fewshot is not None:
            raise ValueError("pass either template= or fewshot=, not both")
        if fewshot is not None:
            tpl = self.fewshot_template if fewshot else self.zeroshot_template
        elif isinstance(template, str):
            tpl = get_template(template)
        else:
            tpl = template or self.default_template
        if tpl is None:
            raise ValueError(f"task {self.name!r} has no such prompt template")
        if tpl.task != self.family:
            raise ValueError(f"template {tpl.key} is for {tpl.task!r}, not {self.name!r}")
        return tpl

    def prompt(
        self,
        example: Example,
        template: str | Template | None = None,
        *,
        fewshot: bool | None = None,
        data_dir: PathLike | None = None,
    ) -> str | Messages:
        """The model input for ``example``: chat messages for a chat template, a plain
        string for a completion template (see :mod:`teacher.core.templates`).

        ``template`` is a Template, an id or a key (``"gsm8k-cot-8shot@v1"``);
        ``fewshot=True/False`` picks the task's few-shot / zero-shot template instead;
        neither gives ``default_template``. ``data_dir`` is where prompt files live
        (BBH's CoT exemplars), resolved like :meth:`load`.
        """
        tpl = self._pick_template(template, fewshot)
        return tpl.render(**self._template_fields(example, tpl, data_dir))

    def _template_fields(
        self, example: Example, template: Template, data_dir: PathLike | None
    ) -> dict[str, str]:
        return {"question": example.question}

    # ---- answers

    def extract_answer(self, text: str) -> str | None:
        """lm-eval's strict filter: the answer in the format the prompt asked for."""
        raise NotImplementedError(f"{self.name} is a {self.output_type} task: no answers")

    def extract_answer_flexible(self, text: str, example: Example | None = None) -> str | None:
        """lm-eval's "flexible-extract" filter: a looser search for the answer."""
        raise NotImplementedError(f"{self.name} is a {self.output_type} task: no answers")

    def is_correct(self, text: str, target: str | Example, *, flexible: bool = False) -> bool:
        """Whether a model response answers correctly: the extracted answer against
        the target under lm-eval's exact_match settings, plus number normalisation.

        ``target`` is a target string or the Example (whose ``target`` is used, and
        whose question the flexible multiple-choice / word-sorting filters need).
        """
        raise NotImplementedError(f"{self.name} is a {self.output_type} task: no answers")

    def reference_response(self, example: Example) -> str:
        """The ground-truth response a student is trained on."""
        return example.answer

    def training_response(self, text: str) -> str:
        """A generated response in the form the student is trained on (its final answer
        stated the way the task's zero-shot prompt asks); unchanged by default."""
        return text

    def rationale(self, response: str) -> str | None:
        """A training response without its final-answer line; None when it has no
        such line (then there is nothing to restate in other words)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def _target_of(target: str | Example) -> tuple[str, Example | None]:
    return (target.target, target) if isinstance(target, Example) else (target, None)


def _none_if_invalid(filtered: str) -> str | None:
    return None if filtered in (INVALID, "") else filtered


# A closing "The answer is N." (gsm8k_cot's format), at the very end of the text.
_ANSWER_SENTENCE = re.compile(
    r"\s*The answer is:?\s*\$?(?P<n>-?[\d,]*\.?\d+)\.?\s*$", re.IGNORECASE
)
# lm-eval's gsm8k reference answers mark calculator calls as <<48/2=24>>.
_CALC_ANNOTATION = re.compile(r"<<[^<>]*>>")


class Gsm8kTask(Task):
    """GSM8K (``openai/gsm8k`` "main"), lm-eval tasks ``gsm8k`` and ``gsm8k_cot``.

    ``target`` is the number after ``####`` in canonical form (``"1,200"`` -> ``"1200"``).
    """

    family = "gsm8k"
    output_type = "generate_until"
    default_template = GSM8K_COT_ZEROSHOT
    zeroshot_template = GSM8K_COT_ZEROSHOT
    fewshot_template = GSM8K_COT_8SHOT

    def __init__(self) -> None:
        self.name = "gsm8k"
        self.splits = ("train", "test")

    def _load_local(self, split: str, root: Path) -> list[dict[str, Any]]:
        path = self._split_file(self._task_dir(root, "gsm8k") / f"{split}.jsonl", split)
        return _load_local_jsonl(path, ("question", "answer"))

    def _load_hub(self, split: str) -> list[dict[str, Any]]:
        return _load_hub(self.name, split, GSM8K_HUB_ID, GSM8K_HUB_CONFIG)

    def _example(self, split: str, index: int, row: dict[str, Any]) -> Example:
        answer = row["answer"]
        final = answer.split("####")[-1].strip()  # gsm8k-cot.yaml doc_to_target
        return Example(
            id=self._id(split, index),
            task=self.name,
            split=split,
            question=row["question"],
            answer=answer,
            target=normalize_number(final) or final,
        )

    def extract_answer(self, text: str) -> str | None:
        """lm-eval ``gsm8k`` strict-match (``#### N``), else ``gsm8k_cot``'s
        (``The answer is N.``): the zero-shot template asks for the first format,
        the 8-shot exemplars elicit the second. Returned as matched, e.g. ``"1,234"``."""
        found = _none_if_invalid(gsm8k_strict_match(text))
        if found is None:
            found = _none_if_invalid(gsm8k_cot_strict_match(text))
        return found

    def extract_answer_flexible(self, text: str, example: Example | None = None) -> str | None:
        """lm-eval gsm8k "flexible-extract": the last number in the text, as matched."""
        return _none_if_invalid(gsm8k_flexible_extract(text))

    def is_correct(self, text: str, target: str | Example, *, flexible: bool = False) -> bool:
        """gsm8k exact_match settings (case, ``,``, ``$``, ``.*#### ``, final ``.``
        ignored), then numbers compared by value: "5.0" matches "5". ``target`` may be
        the full reference answer; the part before ``#### `` is ignored."""
        target_text, _ = _target_of(target)
        found = self.extract_answer_flexible(text) if flexible else self.extract_answer(text)
        if found is None:
            return False
        return _canonical(found, GSM8K_METRIC) == _canonical(target_text, GSM8K_METRIC)

    def training_response(self, text: str) -> str:
        """Few-shot CoT answers end "The answer is N."; the student's zero-shot prompt
        (and the strict metric) want a last line "#### N": a closing "The answer is
        N." sentence becomes that line. Text already using "####" is left alone."""
        if "####" in text:
            return text
        match = _ANSWER_SENTENCE.search(text)
        if match is None:
            return text
        number = normalize_number(match.group("n")) or match.group("n").rstrip(".")
        rationale = text[: match.start()].rstrip()
        return f"{rationale}\n#### {number}" if rationale else f"#### {number}"

    def rationale(self, response: str) -> str | None:
        body, sep, _ = response.rpartition("####")
        return body.rstrip() if sep else None

    def reference_response(self, example: Example) -> str:
        """The human rationale without calculator annotations, ending ``#### <target>``."""
        body = self.rationale(example.answer)
        if body is None:
            raise ValueError(f"{example.id}: reference answer has no '####' line")
        lines = [line.rstrip() for line in _CALC_ANNOTATION.sub("", body).splitlines()]
        rationale = "\n".join(lines).strip()
        final = f"#### {example.target}"
        return f"{rationale}\n{final}" if rationale else final


@functools.lru_cache(maxsize=64)
def _read_cot_prompt(location: str, is_url: bool) -> str:
    if is_url:
        try:
            ds = _datasets().load_dataset(
                "text", data_files=location, sample_by="document", split="train"
            )
        except Exception as e:  # no network
            raise RuntimeError(
                f"could not fetch BBH CoT prompt {location}: {e}. No local data directory "
                f"was found: pass data_dir= or set ${DATA_DIR_ENV}"
            ) from e
        text = ds[0]["text"] if len(ds) else ""
    else:
        text = Path(location).read_text(encoding="utf-8")
    # BIG-Bench-Hard's cot-prompts/<subtask>.txt: a canary line, "-----", then the
    # description and the 3 exemplars.
    _, sep, rest = text.partition("-----\n")
    prefix = (rest if sep else text).strip("\n")
    if not prefix.strip():
        raise DataFormatError(f"{location}: empty CoT prompt")
    return prefix


class BbhTask(Task):
    """One BIG-Bench-Hard subtask, lm-eval ``bbh_cot_fewshot_<subtask>``.

    Only a ``test`` split exists. The default prompt is lm-eval's 3-shot CoT prompt;
    strict extraction is its "get-answer" filter and scoring its plain exact_match;
    the flexible variants are ``bbh_cot_zeroshot_<subtask>``'s "flexible-extract"
    filter and metric (0.4.13 defines flexible filters only for cot_zeroshot).
    """

    family = "bbh"
    output_type = "generate_until"
    default_template = BBH_COT_3SHOT
    zeroshot_template = BBH_COT_ZEROSHOT
    fewshot_template = BBH_COT_3SHOT

    def __init__(self, subtask: str) -> None:
        self.subtask = subtask
        self.name = f"bbh/{subtask}"
        self.splits = ("test",)

    def _load_local(self, split: str, root: Path) -> list[dict[str, Any]]:
        path = self._split_file(self._task_dir(root, "bbh") / f"{self.subtask}.json", split)
        # BIG-Bench-Hard's files are one JSON object {"canary": ..., "examples": [...]};
        # checked here so errors name the file and line, then read with datasets.
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataFormatError(
                f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})"
            ) from None
        examples = data.get("examples") if isinstance(data, dict) else None
        if not isinstance(examples, list) or not examples:
            raise DataFormatError(f"{path}:1: expected an object with a non-empty 'examples' list")
        for i, ex in enumerate(examples):
            if not (
                isinstance(ex, dict)
                and isinstance(ex.get("input"), str)
                and isinstance(ex.get("target"), str)
            ):
                raise DataFormatError(
                    f"{path}: examples[{i}] needs string fields 'input' and 'target'"
                )
        ds = _datasets().load_dataset("json", data_files=str(path), field="examples", split="train")
        rows = ds.to_list()
        if len(rows) != len(examples):
            raise DataFormatError(f"{path}: read {len(rows)} examples, expected {len(examples)}")
        return rows

    def _load_hub(self, split: str) -> list[dict[str, Any]]:
        return _load_hub(self.name, split, BBH_HUB_ID, self.subtask)

    def _example(self, split: str, index: int, row: dict[str, Any]) -> Example:
        return Example(
            id=self._id(split, index),
            task=self.name,
            split=split,
            question=row["input"],
            answer=row["target"],
            target=row["target"],
        )

    def cot_prefix(self, data_dir: PathLike | None = None) -> str:
        """The subtask's CoT exemplars (description + 3 Q/A), from
        ``<data_dir>/bbh/cot-prompts/<subtask>.txt`` or, without a data dir, the
        BIG-Bench-Hard repository.

        Equal to lm-eval's inlined fewshot_config for 26 subtasks; for
        sports_understanding the BBH file has "step by step. Bam" where lm-eval's YAML
        has a newline after "step by step." in the first exemplar.
        """
        root = _resolve_data_dir(data_dir)
        if root is None:
            return _read_cot_prompt(BBH_COT_PROMPTS_URL.format(subtask=self.subtask), True)
        path = self._task_dir(root, "bbh") / "cot-prompts" / f"{self.subtask}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"BBH CoT prompt not found: {path}")
        return _read_cot_prompt(str(path), False)

    def _template_fields(
        self, example: Example, template: Template, data_dir: PathLike | None
    ) -> dict[str, str]:
        fields = {"input": example.question}
        if "prefix" in template.fields:
            fields["prefix"] = self.cot_prefix(data_dir)
        return fields

    def extract_answer(self, text: str) -> str | None:
        """lm-eval bbh cot_fewshot "get-answer": what follows "the answer is " on its
        line minus the last character ("So the answer is (B)." -> "(B)")."""
        return _none_if_invalid(bbh_cot_fewshot_get_answer(text))

    def extract_answer_flexible(self, text: str, example: Example | None = None) -> str | None:
        """lm-eval ``bbh_cot_zeroshot_<subtask>`` "flexible-extract" (by subtask: a
        last-match regex, MultiChoiceRegexFilter, NumberParseRegexFilter,
        MapRegexFilter or WordSortFilter). Pass ``example`` for the filters that read
        the question's options or word list."""
        question = example.question if example is not None else None
        return _none_if_invalid(bbh_flexible_extract(self.subtask, text, question))

    def is_correct(self, text: str, target: str | Example, *, flexible: bool = False) -> bool:
        """Strict: cot_fewshot's exact_match (no ignores). Flexible: cot_zeroshot's
        (case, final ".", ",", "\\", newlines and quotes ignored). Both then compare
        numbers by value."""
        target_text, example = _target_of(target)
        if flexible:
            found, metric = self.extract_answer_flexible(text, example), BBH_COT_ZEROSHOT_METRIC
        else:
            found, metric = self.extract_answer(text), BBH_COT_FEWSHOT_METRIC
        if found is None:
            return False
        return _canonical(found, metric) == _canonical(target_text, metric)

    def reference_response(self, example: Example) -> str:
        """BBH has no human rationales: the exemplars' closing sentence with the
        target, which the strict "get-answer" filter reads back as the target."""
        return f"So the answer is {example.target}."


class WikitextTask(Task):
    """WikiText-2 perplexity, lm-eval ``wikitext``: one Example per article.

    ``answer`` is the detokenized article (what lm-eval scores with rolling
    loglikelihood), ``raw`` the original page (what it counts words/bytes on).
    Local files: ``wikitext-2/{train,valid,test}.txt``; split "validation" reads
    ``valid.txt``.
    """

    family = "wikitext"
    output_type = "loglikelihood_rolling"
    _FILES: ClassVar[dict[str, str]] = {
        "train": "train.txt",
        "validation": "valid.txt",
        "test": "test.txt",
    }

    def __init__(self) -> None:
        self.name = "wikitext-2"
        self.splits = ("train", "validation", "test")

    def _load_local(self, split: str, root: Path) -> list[str]:
        path = self._split_file(self._task_dir(root, "wikitext-2") / self._FILES[split], split)
        # sample_by="document": the whole file as one row, split into articles below.
        ds = _datasets().load_dataset(
            "text", data_files=str(path), sample_by="document", split="train"
        )
        return wikitext_documents(ds[0]["text"] if len(ds) else "")

    def _load_hub(self, split: str) -> list[str]:
        rows = _load_hub(self.name, split, WIKITEXT_HUB_ID, WIKITEXT_HUB_CONFIG)
        return [row["page"] for row in rows]

    def _example(self, split: str, index: int, row: str) -> Example:
        return Example(
            id=self._id(split, index),
            task=self.name,
            split=split,
            question="",
            answer=wikitext_detokenizer(row),
            target="",
            raw=row,
        )

    def prompt(
        self,
        example: Example,
        template: str | Template | None = None,
        *,
        fewshot: bool | None = None,
        data_dir: PathLike | None = None,
    ) -> str:
        """lm-eval's doc_to_text is "": the whole document is the scored continuation."""
        if template is not None or fewshot:
            raise ValueError("wikitext-2 has no prompt templates")
        return ""

    def templates(self) -> list[Template]:
        return []


# --------------------------------------------------------------------------------------
# Registry


@functools.cache
def _registry() -> dict[str, Task]:
    tasks: list[Task] = [Gsm8kTask(), *(BbhTask(s) for s in BBH_SUBTASKS), WikitextTask()]
    return {t.name: t for t in tasks}


def list_tasks() -> list[str]:
    """Every task name: ``"gsm8k"``, ``"bbh/<subtask>"`` (27) and ``"wikitext-2"``."""
    return sorted(_registry())


def get_task(name: str) -> Task:
    """The task called ``name``; unknown names raise ValueError with suggestions."""
    try:
        return _registry()[name]
    except KeyError:
        pass
    names = list_tasks()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if not close and name in BBH_SUBTASKS:
        close = [f"bbh/{name}"]
    if not close and name.startswith("bbh"):
        # lm-eval style names ("bbh_cot_fewshot_navigate") end with the subtask.
        close = [f"bbh/{s}" for s in BBH_SUBTASKS if name.endswith(s)][:3]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown task {name!r}{hint} (known: 'gsm8k', 'bbh/<subtask>' for the "
        f"{len(BBH_SUBTASKS)} BBH subtasks, 'wikitext-2'; see list_tasks())"
    )
