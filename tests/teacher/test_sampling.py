"""The one sampling type (teacher.serving.sampling) and its conversions."""

from __future__ import annotations

import pytest

from teacher.serving import convert
from teacher.serving.engine import EngineRequest
from teacher.serving.sampling import SEED_MODULUS, SamplingParams


def test_for_sample_is_one_sample_with_its_seed():
    params = SamplingParams(temperature=0.5, seed=SEED_MODULUS - 1, n=3, stop=["Q:"])
    sample = params.for_sample(2, default_max_new_tokens=64)
    assert sample.n == 1 and sample.seed == 1 and sample.max_new_tokens == 64
    assert sample.temperature == 0.5 and sample.stop == ("Q:",)
    assert SamplingParams(max_new_tokens=8).for_sample(1, 64).max_new_tokens == 8
    assert SamplingParams().for_sample(3).seed == 3  # no seed counts as 0


def test_engine_requests_take_one_resolved_sample():
    EngineRequest("r", [1], SamplingParams(max_new_tokens=4).for_sample(0))
    for unresolved in (SamplingParams(max_new_tokens=4),  # no seed
                       SamplingParams(seed=1, n=2, max_new_tokens=4),
                       SamplingParams(seed=1)):  # no token budget
        with pytest.raises(ValueError, match="for_sample"):
            EngineRequest("r", [1], unresolved)


def test_stop_is_a_tuple_and_params_are_hashable():
    assert SamplingParams(stop=["a", "b"]) == SamplingParams(stop=("a", "b"))
    assert hash(SamplingParams(stop=["a"])) == hash(SamplingParams(stop=("a",)))


def test_provenance_keeps_the_on_disk_layout():
    params = SamplingParams(temperature=0.5, top_p=0.75, seed=9, n=2, max_new_tokens=16,
                            stop=("Q:",), logprobs=True, time_limit_s=3.0)
    prov = params.provenance()
    assert list(prov) == ["sampling", "seed"]
    assert prov == {"sampling": {"temperature": 0.5, "top_p": 0.75, "top_k": 0, "n": 2,
                                 "max_new_tokens": 16, "stop": ["Q:"]}, "seed": 9}
    kept = SamplingParams.from_provenance(prov)
    assert kept.provenance() == prov and kept.logprobs is False  # not kept
    assert SamplingParams.from_provenance({}) == SamplingParams()


def test_the_wire_carries_every_setting():
    # float32-exact values: the proto's floats are single precision.
    params = SamplingParams(temperature=0.75, top_p=0.5, top_k=40, seed=2**62 + 3, n=4,
                            max_new_tokens=100, min_new_tokens=2, stop=("x", "yz"),
                            logprobs=True, top_logprobs=5, time_limit_s=1.5)
    assert convert.params_from_pb(convert.params_to_pb(params)) == params
    assert convert.params_from_pb(convert.params_to_pb(SamplingParams())) == SamplingParams()
