"""BIG-Bench-Hard: lm-eval ``bbh_cot_fewshot_<subtask>`` for each of the 27 subtasks.

Owns the subtask list, BBH's prompt templates (lm-eval's 3-shot CoT, the zero-shot chat
prompt and the SDFT rewrite prompt), BBH's lm-eval filter settings (the fewshot
"get-answer" and the per-subtask cot_zeroshot "flexible-extract"), its exact_match
settings, reading the CoT exemplar files, and :class:`BbhTask` (registered as
``"bbh/<subtask>"``). Local data: ``bbh/<subtask>.json`` and
``bbh/cot-prompts/<subtask>.txt``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from teacher.core.tasks.base import Example, Task, none_if_invalid
from teacher.core.tasks.data import (
    DATA_DIR_ENV,
    DataFormatError,
    PathLike,
    load_hub,
    load_json_examples,
    read_text_document,
    resolve_data_dir,
)
from teacher.core.tasks.filters import (
    map_regex_filter,
    multi_choice_filter,
    number_parse_filter,
    regex_filter,
    word_sort_filter,
)
from teacher.core.tasks.registry import register_task
from teacher.core.templates import SDFT_HEAD, Template, register_template

# ---------------------------------------------------------------- prompt templates

# lm-eval's bbh_cot_fewshot_<subtask> (lm_eval/tasks/bbh/cot_fewshot/): the
# description plus 3 exemplars, each "Q: {input}\nA: Let's think step by step.\n"
# + rationale, joined by "\n\n". `prefix` is the subtask's cot-prompts/<subtask>.txt
# from BIG-Bench-Hard (after its canary and "-----" lines), which is that same
# text; until ["</s>", "Q", "\n\n"], max_gen_toks 1024
# (lm_eval/tasks/bbh/cot_fewshot/_cot_fewshot_template_yaml).
BBH_COT_3SHOT = register_template(Template(
    id="bbh-cot-3shot",
    version=1,
    task="bbh",
    kind="completion",
    text="{prefix}\n\nQ: {input}\nA: Let's think step by step.\n",
    fields=("prefix", "input"),
    stop=("</s>", "Q", "\n\n"),
    max_new_tokens=1024,
    num_fewshot=3,
    source="lm_eval/tasks/bbh/cot_fewshot/_cot_fewshot_template_yaml",
))

# Zero-shot chat prompt for instruct teachers. It asks for the exemplars'
# closing sentence, "So the answer is X.", which lm-eval's bbh cot_fewshot
# "get-answer" regex reads.
BBH_COT_ZEROSHOT = register_template(Template(
    id="bbh-cot-zeroshot",
    version=1,
    task="bbh",
    kind="chat",
    text=(
        "{input}\n\n"
        "Think step by step. End your response with a final sentence of the form "
        '"So the answer is <answer>." where <answer> is written exactly as the question '
        "asks for it (for a multiple-choice question, the option label, e.g. (A))."
    ),
    fields=("input",),
    max_new_tokens=1024,
    source="distill",
))
# lm-eval's bbh_zeroshot_<subtask> (lm_eval/tasks/bbh/zeroshot/): the subtask's
# description, then "Q: {input}\nA:" (lm-eval prepends the description, which ends in
# "\n\n"). `description` is the first paragraph of cot-prompts/<subtask>.txt, the
# same sentence. The answer-only prompt the bbh_mc metric scores each option after
# (as " " + option: lm-eval's default target_delimiter); stops as in
# lm_eval/tasks/bbh/zeroshot/_zeroshot_template_yaml for generation.
BBH_ZEROSHOT = register_template(Template(
    id="bbh-zeroshot",
    version=1,
    task="bbh",
    kind="completion",
    text="{description}\n\nQ: {input}\nA:",
    fields=("description", "input"),
    stop=("</s>", "Q:", "\n\n"),
    source="lm_eval/tasks/bbh/zeroshot/_zeroshot_template_yaml",
))
# Distillation prompt (teacher.distill.modes.rewrite).
BBH_REWRITE = register_template(Template(
    id="bbh-sdft-rewrite",
    version=1,
    task="bbh",
    kind="chat",
    text=(
        SDFT_HEAD + " Think step by step and end with a final sentence of the form "
        '"So the answer is <answer>."\n'
        "### Instruction:\n{question}\n### Reference Answer:\n{reference}\n### Response:\n"
    ),
    fields=("question", "reference"),
    max_new_tokens=512,
    source="distill (SDFT, Yang et al. 2024)",
))

# ---------------------------------------------------------------- the task

# lm_eval/tasks/bbh/cot_fewshot/_cot_fewshot_template_yaml (0.4.13 moved off lukaemon/bbh;
# same "input"/"target" columns, one "test" split per subtask config).
BBH_HUB_ID = "SaylorTwift/bbh"
# The CoT exemplar files are not part of the hub dataset (lm-eval inlines them in its
# YAML); without a local data dir they are read from the BIG-Bench-Hard repository.
BBH_COT_PROMPTS_URL = (
    "https://raw.githubusercontent.com/suzgunmirac/BIG-Bench-Hard/main/cot-prompts/{subtask}.txt"
)

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


# --------------------------------------------------------------------------------------
# Filters and exact_match settings

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
    return regex_filter(_BBH_GET_ANSWER, text)


def bbh_cot_zeroshot_strict_match(text: str) -> str:
    """lm-eval ``bbh_cot_zeroshot_*`` "strict-match"."""
    return regex_filter(_BBH_ZEROSHOT_STRICT, text)


def _regex(pattern: str) -> Callable[[str, str | None], str]:
    compiled = re.compile(pattern)
    return lambda text, _input: regex_filter(compiled, text, group_select=-1)


def _mapped(pattern_to_value: Mapping[str, str]) -> Callable[[str, str | None], str]:
    return lambda text, _input: map_regex_filter(text, pattern_to_value)


def _number_parse(text: str, _input: str | None) -> str:
    return number_parse_filter(text)


# Per subtask, the first step of "flexible-extract" in lm_eval/tasks/bbh/cot_zeroshot/
# <subtask>.yaml; each takes (response, question input). The 17 subtasks not listed
# here are multiple choice: their YAML uses MultiChoiceRegexFilter.
_BBH_FLEXIBLE_NOT_MULTI_CHOICE: dict[str, Callable[[str, str | None], str]] = {
    "boolean_expressions": _regex(r"\b(True|False)\b"),
    "causal_judgement": _regex(r"\b(Yes|No|yes|no)\b"),
    "dyck_languages": _regex(r"(?<= )([\" \[\(<{}>\)\]]+)|([\" \[\(<{}>\)\]]+)"),
    "formal_fallacies": _regex(r"\b(valid|invalid)\b"),
    "navigate": _regex(r"\b(Yes|No|yes|no)\b"),
    "multistep_arithmetic_two": _number_parse,
    "object_counting": _number_parse,
    "sports_understanding": _mapped(
        {r"\b(no|not plausible)\b": "no", r"\b(yes|plausible)\b": "yes"}
    ),
    "web_of_lies": _mapped(
        {
            r"\b(no|does not tell the truth|is not telling the truth)\b": "no",
            r"\b(yes|tells the truth|is telling the truth)\b": "yes",
        }
    ),
    "word_sorting": word_sort_filter,
}
_BBH_FLEXIBLE: dict[str, Callable[[str, str | None], str]] = {
    subtask: _BBH_FLEXIBLE_NOT_MULTI_CHOICE.get(subtask, multi_choice_filter)
    for subtask in BBH_SUBTASKS
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


# lm_eval/tasks/bbh/cot_fewshot/_cot_fewshot_template_yaml: plain exact_match (its
# ignore_case / ignore_punctuation lines are commented out).
BBH_COT_FEWSHOT_METRIC: dict[str, Any] = {}
# lm_eval/tasks/bbh/cot_zeroshot/_cot_zeroshot_template_yaml.
BBH_COT_ZEROSHOT_METRIC: dict[str, Any] = {
    "ignore_case": True,
    "regexes_to_ignore": ("\\.$", ",", "\\\\", "\n", '"'),
}


# --------------------------------------------------------------------------------------
# CoT exemplars


@functools.lru_cache(maxsize=64)
def _read_cot_prompt(location: str, is_url: bool) -> str:
    if is_url:
        try:
            text = read_text_document(location)
        except Exception as e:  # no network
            raise RuntimeError(
                f"could not fetch BBH CoT prompt {location}: {e}. No local data directory "
                f"was found: pass data_dir= or set ${DATA_DIR_ENV}"
            ) from e
    else:
        text = Path(location).read_text(encoding="utf-8")
    # BIG-Bench-Hard's cot-prompts/<subtask>.txt: a canary line, "-----", then the
    # description and the 3 exemplars.
    _, sep, rest = text.partition("-----\n")
    prefix = (rest if sep else text).strip("\n")
    if not prefix.strip():
        raise DataFormatError(f"{location}: empty CoT prompt")
    return prefix


# --------------------------------------------------------------------------------------
# The task


class BbhTask(Task):
    """One BIG-Bench-Hard subtask, lm-eval ``bbh_cot_fewshot_<subtask>``.

    Only a ``test`` split exists. The default prompt is lm-eval's 3-shot CoT prompt;
    strict extraction is its "get-answer" filter and scoring its plain exact_match;
    the flexible variants are ``bbh_cot_zeroshot_<subtask>``'s "flexible-extract"
    filter and metric (0.4.13 defines flexible filters only for cot_zeroshot).
    """

    family = "bbh"
    output_type = "generate_until"
    splits = ("test",)
    default_template = BBH_COT_3SHOT
    zeroshot_template = BBH_COT_ZEROSHOT
    fewshot_template = BBH_COT_3SHOT
    # Strict: cot_fewshot's exact_match (no ignores). Flexible: cot_zeroshot's (case,
    # final ".", ",", "\\", newlines and quotes ignored).
    strict_metric: ClassVar[dict[str, Any]] = BBH_COT_FEWSHOT_METRIC
    flexible_metric: ClassVar[dict[str, Any]] = BBH_COT_ZEROSHOT_METRIC

    def __init__(self, subtask: str) -> None:
        super().__init__(f"bbh/{subtask}")
        self.subtask = subtask

    def _load_local(self, split: str, root: Path) -> list[dict[str, Any]]:
        path = self._split_file(self._task_dir(root, "bbh") / f"{self.subtask}.json", split)
        return load_json_examples(path, ("input", "target"))

    def _load_hub(self, split: str) -> list[dict[str, Any]]:
        return load_hub(self.name, split, BBH_HUB_ID, self.subtask)

    def _example(self, split: str, index: int, row: dict[str, Any]) -> Example:
        return self._new_example(
            split, index, question=row["input"], answer=row["target"], target=row["target"]
        )

    def cot_prefix(self, data_dir: PathLike | None = None) -> str:
        """The subtask's CoT exemplars (description + 3 Q/A), from
        ``<data_dir>/bbh/cot-prompts/<subtask>.txt`` or, without a data dir, the
        BIG-Bench-Hard repository.

        Equal to lm-eval's inlined fewshot_config for 26 subtasks; for
        sports_understanding the BBH file has "step by step. Bam" where lm-eval's YAML
        has a newline after "step by step." in the first exemplar.
        """
        root = resolve_data_dir(data_dir)
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
        if "description" in template.fields:
            fields["description"] = self.description(data_dir)
        return fields

    def description(self, data_dir: PathLike | None = None) -> str:
        """The subtask's one-paragraph task description (the CoT prompt's text before
        its first exemplar), which lm-eval's bbh zeroshot/fewshot prompts start with."""
        head, sep, _ = self.cot_prefix(data_dir).partition("\n\nQ: ")
        if not sep or not head.strip():
            raise DataFormatError(f"BBH CoT prompt of {self.subtask}: no description "
                                  "before its first exemplar")
        return head.strip()

    def extract_answer(self, text: str) -> str | None:
        """lm-eval bbh cot_fewshot "get-answer": what follows "the answer is " on its
        line minus the last character ("So the answer is (B)." -> "(B)")."""
        return none_if_invalid(bbh_cot_fewshot_get_answer(text))

    def extract_answer_flexible(self, text: str, example: Example | None = None) -> str | None:
        """lm-eval ``bbh_cot_zeroshot_<subtask>`` "flexible-extract" (by subtask: a
        last-match regex, MultiChoiceRegexFilter, NumberParseRegexFilter,
        MapRegexFilter or WordSortFilter). Pass ``example`` for the filters that read
        the question's options or word list."""
        question = example.question if example is not None else None
        return none_if_invalid(bbh_flexible_extract(self.subtask, text, question))

    def reference_response(self, example: Example) -> str:
        """BBH has no human rationales: the exemplars' closing sentence with the
        target, which the strict "get-answer" filter reads back as the target."""
        return f"So the answer is {example.target}."


@register_task(*(f"bbh/{subtask}" for subtask in BBH_SUBTASKS))
def _bbh_subtask(name: str) -> BbhTask:
    return BbhTask(name.removeprefix("bbh/"))
