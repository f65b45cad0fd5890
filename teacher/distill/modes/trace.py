"""``trace`` ("Distilling step-by-step", Hsieh et al. 2023): sample k rationales with
a versioned CoT template (by default lm-eval's few-shot one, ``COT_TEMPLATES``),
extract each answer, keep the correct ones (or, with ``require_correct`` off, any
usable one).
"""

from __future__ import annotations

from teacher.distill.modes.base import DistillOptions, SampledAnswers, register


@register
class Trace(SampledAnswers):
    name = "trace"

    def may_choose_incorrect(self, options: DistillOptions) -> bool:
        return not options.require_correct
