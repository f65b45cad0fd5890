"""GSM8K (``openai/gsm8k`` "main"): lm-eval tasks ``gsm8k`` and ``gsm8k_cot``.

Owns GSM8K's lm-eval filter regexes and exact_match settings, the reference answer's
final-answer rule, and :class:`Gsm8kTask` (registered as ``"gsm8k"``). Local data:
``gsm8k/{train,test}.jsonl`` with string fields ``question`` and ``answer``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from teacher.core.tasks.base import Example, Task, none_if_invalid
from teacher.core.tasks.data import load_hub, load_jsonl
from teacher.core.tasks.filters import normalize_number, regex_filter
from teacher.core.tasks.registry import register_task
from teacher.core.templates import GSM8K_COT_8SHOT, GSM8K_COT_ZEROSHOT

# The hub dataset lm-eval 0.4.13 reads (dataset_path / dataset_name in its YAML).
GSM8K_HUB_ID, GSM8K_HUB_CONFIG = "openai/gsm8k", "main"  # lm_eval/tasks/gsm8k/gsm8k.yaml

# lm_eval/tasks/gsm8k/gsm8k.yaml, filter "strict-match".
_GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
# lm_eval/tasks/gsm8k/gsm8k-cot.yaml (and gsm8k-cot-zeroshot.yaml), filter "strict-match".
# The final "." is the regex wildcard, as in lm-eval: it needs one more character.
_GSM8K_COT_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
# gsm8k.yaml / gsm8k-cot.yaml, filter "flexible-extract" (group_select -1).
_GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def gsm8k_strict_match(text: str) -> str:
    """lm-eval ``gsm8k`` "strict-match": the number after ``#### ``."""
    return regex_filter(_GSM8K_STRICT, text)


def gsm8k_cot_strict_match(text: str) -> str:
    """lm-eval ``gsm8k_cot`` "strict-match": the number in ``The answer is N.``."""
    return regex_filter(_GSM8K_COT_STRICT, text)


def gsm8k_flexible_extract(text: str) -> str:
    """lm-eval gsm8k "flexible-extract": the last number-like run in the text."""
    return regex_filter(_GSM8K_FLEXIBLE, text, group_select=-1)


# lm_eval/tasks/gsm8k/gsm8k.yaml (and gsm8k-cot.yaml) metric_list exact_match.
GSM8K_METRIC: dict[str, Any] = {
    "ignore_case": True,
    "ignore_punctuation": False,
    "regexes_to_ignore": (",", "\\$", "(?s).*#### ", "\\.$"),
}


def gsm8k_final_answer(answer: str) -> str:
    """lm-eval gsm8k-cot.yaml ``doc_to_target``: the text after the last ``####`` of a
    reference answer, stripped, as written (``"1,200"``); ``Example.target`` is its
    canonical form (``"1200"``)."""
    return answer.rpartition("####")[2].strip()


# A closing "The answer is N." (gsm8k_cot's format), at the very end of the text.
_ANSWER_SENTENCE = re.compile(
    r"\s*The answer is:?\s*\$?(?P<n>-?[\d,]*\.?\d+)\.?\s*$", re.IGNORECASE
)
# lm-eval's gsm8k reference answers mark calculator calls as <<48/2=24>>.
_CALC_ANNOTATION = re.compile(r"<<[^<>]*>>")


@register_task("gsm8k")
class Gsm8kTask(Task):
    """GSM8K (``openai/gsm8k`` "main"), lm-eval tasks ``gsm8k`` and ``gsm8k_cot``.

    ``target`` is the number after ``####`` in canonical form (``"1,200"`` -> ``"1200"``).
    """

    family = "gsm8k"
    output_type = "generate_until"
    splits = ("train", "test")
    default_template = GSM8K_COT_ZEROSHOT
    zeroshot_template = GSM8K_COT_ZEROSHOT
    fewshot_template = GSM8K_COT_8SHOT
    # gsm8k exact_match settings for both (case, ",", "$", ".*#### ", final "."
    # ignored): a full reference answer also works as the target.
    strict_metric: ClassVar[dict[str, Any]] = GSM8K_METRIC
    flexible_metric: ClassVar[dict[str, Any]] = GSM8K_METRIC

    def __init__(self, name: str = "gsm8k") -> None:
        super().__init__(name)

    def _load_local(self, split: str, root: Path) -> list[dict[str, Any]]:
        path = self._split_file(self._task_dir(root, "gsm8k") / f"{split}.jsonl", split)
        return load_jsonl(path, ("question", "answer"))

    def _load_hub(self, split: str) -> list[dict[str, Any]]:
        return load_hub(self.name, split, GSM8K_HUB_ID, GSM8K_HUB_CONFIG)

    def _example(self, split: str, index: int, row: dict[str, Any]) -> Example:
        final = gsm8k_final_answer(row["answer"])
        return self._new_example(
            split,
            index,
            question=row["question"],
            answer=row["answer"],
            target=normalize_number(final) or final,
        )

    def extract_answer(self, text: str) -> str | None:
        """lm-eval ``gsm8k`` strict-match (``#### N``), else ``gsm8k_cot``'s
        (``The answer is N.``): the zero-shot template asks for the first format,
        the 8-shot exemplars elicit the second. Returned as matched, e.g. ``"1,234"``."""
        found = none_if_invalid(gsm8k_strict_match(text))
        if found is None:
            found = none_if_invalid(gsm8k_cot_strict_match(text))
        return found

    def extract_answer_flexible(self, text: str, example: Example | None = None) -> str | None:
        """lm-eval gsm8k "flexible-extract": the last number in the text, as matched."""
        return none_if_invalid(gsm8k_flexible_extract(text))

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
