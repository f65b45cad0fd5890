"""Evaluation of students: target gain, forgetting, memorization, and the comparison report.

``distill-eval run`` (:mod:`eval.runner`) measures one model, base or base + a student
run's LoRA adapter, through the teacher's engines; ``distill-eval compare``
(:mod:`eval.compare`) turns recorded results into a report. Metrics live in
:mod:`eval.metrics`, intervals in :mod:`eval.stats`.
"""
