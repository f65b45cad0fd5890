"""``rewrite`` (SDFT, Yang et al. 2024): the model rewrites the reference answer in
its own words; rewrites that leak the template or change the final answer are
rejected and the record falls back to the reference.
"""

from __future__ import annotations

import re
from typing import ClassVar

from teacher.core.tasks import Example, Task
from teacher.core.tasks.bbh import BBH_REWRITE
from teacher.core.tasks.gsm8k import GSM8K_REWRITE
from teacher.core.templates import Template
from teacher.distill.modes.base import DistillMode, register
from teacher.serving.errors import InvalidArgument
from teacher.serving.tokenization import PromptInput

# A rewrite that talks about its instructions instead of answering is useless as
# training data (SDFT filters these); matched case-insensitively.
LEAK_PATTERNS = (
    r"reference answer",
    r"\byour (own )?response\b",
    r"\bmy (own )?response\b",
    r"###\s*(instruction|response|reference)",
    r"\bthe reference\b",
    r"<number>",  # the answer-format instruction copied back
)
_LEAK = re.compile("|".join(f"(?:{p})" for p in LEAK_PATTERNS), re.IGNORECASE)


def template_leak(text: str) -> str | None:
    """The leaked template phrase in ``text``, or None."""
    match = _LEAK.search(text)
    return match.group(0) if match else None


@register
class Rewrite(DistillMode):
    name = "rewrite"
    default_num_candidates = 1
    default_temperature = 0.0  # one rewrite, greedily
    templates: ClassVar[dict[str, Template]] = {"gsm8k": GSM8K_REWRITE, "bbh": BBH_REWRITE}

    def check_template(self, tpl: Template) -> None:
        if set(tpl.fields) != {"question", "reference"}:
            raise InvalidArgument("template", f"{tpl.key} is not a rewrite template")

    def generation_prompt(self, task: Task, example: Example, tpl: Template,
                          base: dict) -> PromptInput:
        """The question and the reference, its final line as the template shows it."""
        shown = base["reference"]
        body = task.rationale(shown)
        if tpl.reference_answer_line and body is not None:
            answer = tpl.reference_answer_line.format(answer=base["target"])
            shown = f"{body}\n{answer}".lstrip()
        return tpl.render(question=example.question, reference=shown)

    def own_rejection(self, text: str) -> str:
        leak = template_leak(text)
        return f"template leak: {leak!r}" if leak else ""
