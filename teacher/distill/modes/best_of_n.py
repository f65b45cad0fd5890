"""``best_of_n`` (self-output, Wu et al. 2025; GRAPE, Zhang et al. 2025): sample N
answers (by default with the few-shot CoT prompt, as ``trace`` does), score each
under the scorer model (the student's base) and keep the correct one with the
lowest perplexity.
"""

from __future__ import annotations

from typing import ClassVar

from teacher.core.templates import BBH_COT_ZEROSHOT, GSM8K_COT_8SHOT, Template
from teacher.distill.modes.base import DistillMode, register


@register
class BestOfN(DistillMode):
    name = "best_of_n"
    default_num_candidates = 4
    default_temperature = 0.7  # several candidates must differ
    templates: ClassVar[dict[str, Template]] = {"gsm8k": GSM8K_COT_8SHOT, "bbh": BBH_COT_ZEROSHOT}
