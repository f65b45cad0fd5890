"""The service over a scripted engine: what reaches the engine, timing, per-sample errors."""

from __future__ import annotations

from teacher.api import teacher_pb2 as pb
from teacher.serving import convert
from teacher.serving.sampling import SamplingParams
from teacher.serving.service import SampleResult
from tests.teacher.helpers import FAIL, scripted_service


async def _finals(service, params: SamplingParams) -> list[SampleResult]:
    finals = [e async for e in service.generate("", "prompt", params)
              if isinstance(e, SampleResult)]
    return sorted(finals, key=lambda r: r.index)


async def test_the_engine_gets_one_seeded_sample_per_request():
    service = await scripted_service(["abc"])
    engine = service.hosts["teacher"].engine
    await _finals(service, SamplingParams(temperature=1.0, seed=10, n=3, stop=["z"]))
    samples = sorted((r.sampling for r in engine.requests), key=lambda s: s.seed)
    assert [s.seed for s in samples] == [10, 11, 12]
    assert all(s.n == 1 and s.max_new_tokens == service.limits.default_max_new_tokens
               for s in samples)


async def test_queue_time_is_admission_to_the_first_engine_output():
    service = await scripted_service(["abcd"], delay_s=0.05)
    (result,) = await _finals(service, SamplingParams(seed=0))
    assert 0.05 <= result.queue_s <= result.time_to_first_token_s <= result.total_s
    assert convert.completion_to_pb(result).timing.queue_s == result.queue_s


async def test_a_failed_sample_ends_with_error_while_the_others_finish():
    service = await scripted_service(["abc", FAIL, "defg"])
    results = await _finals(service, SamplingParams(temperature=1.0, seed=0, n=3))
    assert [r.stop_reason for r in results] == ["eos", "error", "eos"]
    assert [r.text for r in results] == ["abc", "x", "defg"]
    assert "scripted" in results[1].error and not results[0].error
    assert service.serving  # one failed request does not take the model out of service
    wire = convert.completion_to_pb(results[1])
    assert wire.stop_reason == pb.STOP_REASON_ERROR and wire.error == results[1].error
    assert convert.completion_from_pb(wire).stop_reason == "error"
