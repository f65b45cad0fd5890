"""The one sampling type, from the API edge to the engine.

:class:`SamplingParams` (modelled on vLLM's) is what a caller asks for, what
:meth:`TeacherService.check_params <teacher.serving.service.TeacherService.check_params>`
validates and completes (server default ``max_new_tokens``, a drawn seed), what
crosses the wire (``teacher.serving.convert`` maps it to and from the proto message,
once), what the data job configures, and, narrowed by :meth:`SamplingParams.for_sample`
to one sample, what an engine honours. A distillation record keeps part of it as
provenance (:meth:`SamplingParams.provenance`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

SEED_MODULUS = 2**63  # seeds travel as uint64 and engines take non-negative int64
# The settings a distillation record's provenance["sampling"] keeps, in on-disk order.
PROVENANCE_FIELDS = ("temperature", "top_p", "top_k", "n", "max_new_tokens", "stop")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample; also one sample's settings as an engine sees them (``for_sample``)."""

    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None  # None: the service draws one; sample i uses seed + i
    n: int = 1  # samples per prompt
    max_new_tokens: int = 0  # 0: the server's default
    min_new_tokens: int = 0  # EOS is suppressed until this many tokens exist
    stop: tuple[str, ...] = ()  # stop sequences, applied by the service (not engines)
    logprobs: bool = False  # raw (untempered) logprob of each sampled token
    top_logprobs: int = 0  # alternatives per token (implies logprobs in the service)
    time_limit_s: float = 0.0  # 0 = none; counted from when the request arrived

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))  # callers pass lists too

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def for_sample(self, index: int = 0, default_max_new_tokens: int = 0) -> SamplingParams:
        """Sample ``index``'s settings as an engine honours them: ``n`` = 1, the seed
        resolved to ``seed + index`` (no seed counts as 0; the service draws one
        first) and ``max_new_tokens`` defaulted."""
        return replace(
            self,
            n=1,
            seed=((self.seed or 0) + index) % SEED_MODULUS,
            max_new_tokens=self.max_new_tokens or default_max_new_tokens,
        )

    @classmethod
    def from_provenance(cls, provenance: dict[str, Any]) -> SamplingParams:
        """The settings a record's provenance kept (the inverse of ``provenance``);
        those it does not keep take their defaults."""
        kept = provenance.get("sampling") or {}
        known = {name: kept[name] for name in PROVENANCE_FIELDS if name in kept}
        return cls(**known, seed=provenance.get("seed"))

    def provenance(self) -> dict[str, Any]:
        """The ``sampling`` and ``seed`` entries of a distillation record's provenance."""
        sampling = {name: getattr(self, name) for name in PROVENANCE_FIELDS}
        sampling["stop"] = list(self.stop)
        return {"sampling": sampling, "seed": self.seed}
