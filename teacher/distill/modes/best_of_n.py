"""``best_of_n`` (self-output, Wu et al. 2025; GRAPE, Zhang et al. 2025): sample the
student N times on the prompt it is trained on, score each answer under the scorer
model (the student's base) given that same prompt, and keep the correct one with the
lowest perplexity.

The prompt is the record's ``prompt``: the task's zero-shot chat prompt, the one
``student.data`` trains on (``record.prompt`` for teacher data, ``task.prompt(example)``
for ground truth — the same template). It is not the few-shot CoT prompt ``trace``
samples from (that is another distribution than the student's own), nor the eval's
gsm8k prompt (``gsm8k-cot-boxed``): GRAPE's point is a response that is likely under
the student *as it is trained* — what it is conditioned on in training is this prompt,
so that is the distribution to sample and the context to score in; a boxed answer
would also not be in the "#### N" format the student is trained to write.
"""

from __future__ import annotations

from typing import ClassVar

from teacher.core.tasks import Example, Task
from teacher.core.tasks.bbh import BBH_COT_ZEROSHOT
from teacher.core.tasks.gsm8k import GSM8K_COT_ZEROSHOT
from teacher.core.templates import Template
from teacher.distill.modes.base import SampledAnswers, register
from teacher.serving.errors import InvalidArgument
from teacher.serving.tokenization import PromptInput


@register
class BestOfN(SampledAnswers):
    name = "best_of_n"
    # Each family's zero-shot template (its task's ``zeroshot_template``, which makes
    # the record's prompt); ``template`` refuses any other.
    templates: ClassVar[dict[str, Template]] = {"gsm8k": GSM8K_COT_ZEROSHOT,
                                                "bbh": BBH_COT_ZEROSHOT}

    def template(self, task: Task, template: str) -> Template:
        tpl = super().template(task, template)
        own = task.zeroshot_template
        if own is None or tpl.key != own.key:
            raise InvalidArgument(
                "template",
                f"{tpl.key}: best_of_n samples the student on the prompt it trains on "
                f"({own.key if own else 'none for ' + task.name}); for answers to another "
                "prompt use mode trace with the student as generator",
            )
        return tpl

    def generation_prompt(self, task: Task, example: Example, tpl: Template,
                          base: dict) -> PromptInput:
        """The record's own prompt: what the student trains on and the scorer scores in."""
        return base["prompt"]
