"""Helpers shared by the teacher tests."""

from __future__ import annotations

from teacher.serving.sampling import SamplingParams


def one_sample(**settings) -> SamplingParams:
    """One sample's settings as the service hands them to an engine (seed 0, 128 tokens
    unless given)."""
    return SamplingParams(**settings).for_sample(0, default_max_new_tokens=128)
