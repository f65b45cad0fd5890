"""``trace`` ("Distilling step-by-step", Hsieh et al. 2023): sample k rationales with
a versioned few-shot CoT template, extract each answer, keep the correct ones (or,
with ``require_correct`` off, any usable one).

Traces use lm-eval's few-shot CoT prompt: small instruct models answer the
zero-shot chat prompt with a bare "#### N" (Qwen2.5-Coder-0.5B does), which teaches
no reasoning; pass the task's zero-shot template (e.g. "gsm8k-cot-zeroshot") for
pure self-outputs.
"""

from __future__ import annotations

from typing import ClassVar

from teacher.core.templates import BBH_COT_ZEROSHOT, GSM8K_COT_8SHOT, Template
from teacher.distill.modes.base import DistillMode, DistillOptions, register


@register
class Trace(DistillMode):
    name = "trace"
    default_num_candidates = 4
    default_temperature = 0.7  # several candidates must differ
    templates: ClassVar[dict[str, Template]] = {"gsm8k": GSM8K_COT_8SHOT, "bbh": BBH_COT_ZEROSHOT}

    def may_choose_incorrect(self, options: DistillOptions) -> bool:
        return not options.require_correct
