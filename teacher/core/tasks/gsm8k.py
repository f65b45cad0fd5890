"""GSM8K (``openai/gsm8k`` "main"): lm-eval tasks ``gsm8k`` and ``gsm8k_cot``.

Owns GSM8K's prompt templates (lm-eval's 8-shot CoT, the zero-shot chat prompt and the
SDFT rewrite prompts), its lm-eval filter regexes and exact_match settings, the
reference answer's final-answer rule, and :class:`Gsm8kTask` (registered as
``"gsm8k"``). Local data: ``gsm8k/{train,test}.jsonl`` with string fields ``question``
and ``answer``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from teacher.core.tasks.base import Example, Task, none_if_invalid
from teacher.core.tasks.data import load_hub, load_jsonl
from teacher.core.tasks.filters import INVALID, normalize_number, regex_filter
from teacher.core.tasks.registry import register_task
from teacher.core.templates import SDFT_HEAD, Template, escape, register_template

# ---------------------------------------------------------------- prompt templates

# lm-eval 0.4.13 lm_eval/tasks/gsm8k/gsm8k-cot.yaml, fewshot_config.samples: the
# 8 chain-of-thought exemplars of Wei et al. (2022), as (question, target).
GSM8K_COT_EXEMPLARS: tuple[tuple[str, str], ...] = (
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
        "After they are done, there will be 21 trees. How many trees did the grove workers "
        "plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. "
        "So there must have been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in "
        "the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they "
        "have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = "
        "74. After eating 35, they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How "
        "many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave "
        "Denny 20 - 12 = 8. The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How "
        "many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 "
        "more toys. 5 + 4 = 9. The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each "
        "day, from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So "
        "5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 "
        "more. How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
        "After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she "
        "has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.",
    ),
)


# Zero-shot chat prompt for instruct teachers. It asks for GSM8K's own "#### N"
# final line, so lm-eval's gsm8k "strict-match" regex reads the answer and the
# response has the same shape as the human references students train on.
GSM8K_COT_ZEROSHOT = register_template(Template(
    id="gsm8k-cot-zeroshot",
    version=1,
    task="gsm8k",
    kind="chat",
    text=(
        "{question}\n\n"
        "Solve the problem step by step. Then write the final answer on its own last line "
        'in the form "#### <number>", using only digits (no units, no commas).'
    ),
    fields=("question",),
    max_new_tokens=512,
    source="distill",
))

# The evaluation prompt an instruct model follows: Qwen2.5's recommended reasoning
# instruction, as Qwen's own math evaluation sends it (QwenLM/Qwen2.5-Math
# evaluation/utils.py PROMPT_TEMPLATES["qwen-boxed"]: this system turn, the question,
# then the instruction). The zero-shot "#### N" prompt above is the training format,
# not one the instruct model was tuned to follow: scoring the base model on it
# measures the prompt, not the model (issue 15; docs/eval-crosscheck.md).
GSM8K_COT_BOXED = register_template(Template(
    id="gsm8k-cot-boxed",
    version=1,
    task="gsm8k",
    kind="chat",
    system="You are a helpful assistant.",
    text="{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    fields=("question",),
    max_new_tokens=512,
    source="QwenLM/Qwen2.5-Math evaluation/utils.py (qwen-boxed)",
))

# lm-eval's gsm8k_cot (lm_eval/tasks/gsm8k/gsm8k-cot.yaml): doc_to_text
# "Q: {{question}}\nA:", target_delimiter " ", fewshot_delimiter "\n\n", the 8
# fixed exemplars (sampler first_n), no description; until ["Q:", "</s>",
# "<|im_end|>"]; max_gen_toks defaults to 256 (lm_eval/models/huggingface.py).
GSM8K_COT_8SHOT = register_template(Template(
    id="gsm8k-cot-8shot",
    version=1,
    task="gsm8k",
    kind="completion",
    text="".join(f"Q: {escape(q)}\nA: {escape(a)}\n\n" for q, a in GSM8K_COT_EXEMPLARS)
    + "Q: {question}\nA:",
    fields=("question",),
    stop=("Q:", "</s>", "<|im_end|>"),
    max_new_tokens=256,
    num_fewshot=8,
    source="lm_eval/tasks/gsm8k/gsm8k-cot.yaml",
))

# Distillation prompts (teacher.distill.modes): the teacher generates training data
# with them; the student trains on the zero-shot prompt -> the chosen response.
GSM8K_REWRITE_V1 = register_template(Template(
    id="gsm8k-sdft-rewrite",
    version=1,
    task="gsm8k",
    kind="chat",
    text=(
        SDFT_HEAD + " Reason step by step and end with the final answer on its own last "
        'line in the form "#### <number>".\n'
        "### Instruction:\n{question}\n### Reference Answer:\n{reference}\n### Response:\n"
    ),
    fields=("question", "reference"),
    max_new_tokens=384,
    source="distill (SDFT, Yang et al. 2024)",
))
# Version 2: small instruct models (Qwen2.5-Coder-0.5B) answer v1 with a bare
# "#### N", which has no reasoning and is rejected; given the reference as a
# private system note (ending in prose, not "#### N") and the question as the
# task's own zero-shot prompt, they write a step-by-step solution in their own
# style (and the answer check still rejects the ones that stray from the
# reference's result).
GSM8K_REWRITE = register_template(Template(
    id="gsm8k-sdft-rewrite",
    version=2,
    task="gsm8k",
    kind="chat",
    system=(
        "Reference solution (for you only; the user does not see it):\n{reference}\n\n"
        "Using the reference solution as a guide, write your own response to the user."
    ),
    text=GSM8K_COT_ZEROSHOT.text,
    fields=("question", "reference"),
    max_new_tokens=384,
    # Shown "#### N", the model copies that line first and reasons after it.
    reference_answer_line="The final answer is {answer}.",
    source="distill (SDFT, Yang et al. 2024; reference as a system note)",
))


# ---------------------------------------------------------------- the task

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


# The boxed prompt's strict match: a plain number as the whole content of a \boxed{}
# (lm-eval's strict-match number pattern inside the braces), the last one, since
# a model may box intermediate results before its final answer.
GSM8K_BOXED_STRICT = re.compile(r"\\boxed\{(\-?[0-9\.\,]+)\}")


def last_boxed_content(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced), else None.

    lm_eval/tasks/hendrycks_math/utils.py (and minerva_math's) ``last_boxed_only_string``
    then ``remove_boxed`` (Hendrycks et al.'s MATH rule): ``\\boxed N`` (a space, no
    braces) runs to the next ``$``. Where lm-eval would take ``\\fbox{...}`` or hit its
    ``assert``, None."""
    if "\\boxed " in text:
        return text.split("\\boxed ")[-1].split("$")[0]
    idx = text.rfind("\\boxed")
    if idx < 0:
        return None
    depth = 0
    for i in range(idx, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                boxed = text[idx : i + 1]
                left = "\\boxed{"
                return boxed[len(left) : -1] if boxed.startswith(left) else None
    return None


def gsm8k_boxed_strict_match(text: str) -> str:
    """Strict match of the boxed prompt: the last ``\\boxed{N}`` holding only a number."""
    return regex_filter(GSM8K_BOXED_STRICT, text, group_select=-1)


def gsm8k_boxed_flexible_extract(text: str) -> str:
    """Flexible extraction of the boxed prompt: lm-eval gsm8k's flexible-extract regex
    (the last number-like run) on the last boxed content, so ``\\boxed{\\$1,200}`` and
    ``\\boxed{18 \\text{ dollars}}`` read as the number (a unit with a number in it,
    ``cm^2``, reads as that number); without a boxed number, on the whole text (as
    lm-eval's flexible-extract does)."""
    boxed = last_boxed_content(text)
    if boxed is not None:
        # LaTeX's "{,}" thousands separator (1{,}200) would split the number; this
        # project's addition, not lm-eval's.
        found = gsm8k_flexible_extract(boxed.replace("{,}", ","))
        if found != INVALID:
            return found
    return gsm8k_flexible_extract(text)


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
