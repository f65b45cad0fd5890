"""The distillation data job: per-example distillation modes (``modes``: trace,
rewrite, best-of-n), the resumable generate job that writes records (``job``), and
near-duplicate marking (``dedup``).
"""
