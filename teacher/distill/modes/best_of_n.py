"""``best_of_n`` (self-output, Wu et al. 2025; GRAPE, Zhang et al. 2025): sample N
answers (by default with lm-eval's few-shot CoT prompt, ``COT_TEMPLATES``), score
each under the scorer model (the student's base) and keep the correct one with the
lowest perplexity.
"""

from __future__ import annotations

from teacher.distill.modes.base import SampledAnswers, register


@register
class BestOfN(SampledAnswers):
    name = "best_of_n"
