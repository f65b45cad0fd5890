"""The teacher's public face: one EngineSettings type, the client's typed results
(wire round trips of every converter), and local_teacher() on a real server."""

from __future__ import annotations

import pytest

from teacher.core.config import from_dict
from teacher.serving import convert
from teacher.serving.engine import BATCH_SIZE_OPTION, EngineSettings, ModelInfo
from teacher.serving.service import (
    LogprobEntry,
    Provenance,
    SampleChunk,
    SampleResult,
    ScoreResult,
)

PROV = Provenance("smol", "rev1", "hf", "4.0", 7, "req-1")


def test_resolved_names_the_engine_and_its_batch_knob():
    hf = EngineSettings(name="hf", max_batch_size=8).resolved()
    assert hf.options == {"max_batch_size": 8} and hf.max_batch_size is None
    vllm = EngineSettings(name="vllm", max_batch_size=64, options={"x": 1}).resolved()
    assert vllm.options == {"max_num_seqs": 64, "x": 1}
    # An explicit engine option of the same name wins, as it always did in eval.
    explicit = EngineSettings(name="hf", max_batch_size=8, options={"max_batch_size": 2})
    assert explicit.resolved().options == {"max_batch_size": 2}
    assert EngineSettings().resolved().name in BATCH_SIZE_OPTION  # "" = the default engine
    assert EngineSettings(name="hf").resolved().options == {}  # nothing invented


def test_a_section_default_is_the_base_of_its_keys():
    from dataclasses import dataclass, field

    @dataclass
    class Holder:
        engine: EngineSettings = field(default_factory=lambda: EngineSettings(dtype="float32"))

    assert from_dict(Holder, {"engine": {"name": "vllm"}}).engine == EngineSettings(
        name="vllm", dtype="float32")
    assert from_dict(Holder, {}).engine.dtype == "float32"


def test_suite_engine_section_keeps_its_written_keys():
    from eval.suite import load_suite

    suite = load_suite("smoke")
    assert set(suite.to_dict()["engine"]) == {"name", "dtype", "max_model_len",
                                              "max_batch_size", "options"}
    moved = load_suite("smoke", ["engine.device=cpu"])
    assert moved.to_dict()["engine"]["device"] == "cpu"  # set: written


def test_generate_events_round_trip():
    entry = LogprobEntry(5, -0.5, "a", ((5, -0.5, "a"), (6, -1.5, "b")))
    chunk = SampleChunk(1, "hi", (5,), (entry,))
    assert convert.generate_event_from_pb(convert.chunk_to_pb(chunk)) == chunk
    result = SampleResult(index=1, stop_reason="stop_sequence", text="hi", token_ids=[5],
                          logprobs=[entry], stop_sequence="\n", prompt_tokens=3,
                          completion_tokens=1, queue_s=0.25, time_to_first_token_s=0.5,
                          total_s=1.0, tokens_per_s=2.0, provenance=PROV)
    back = convert.generate_event_from_pb(convert.final_to_pb(result, PROV))
    assert back == result


def test_score_tokenize_models_load_round_trip():
    import teacher.api.teacher_pb2 as pb

    score = ScoreResult(token_ids=(5, 6), logprobs=(-0.5, -1.5), tokens=("a", "b"),
                        nll_sum=2.0, num_tokens=2, mean_nll=1.0, perplexity=2.718281828,
                        frac_above_threshold=0.5, prompt_tokens=3)
    assert convert.score_result_from_pb(convert.score_result_to_pb(score, True)) == score
    bare = convert.score_result_from_pb(convert.score_result_to_pb(score, False))
    assert bare.token_ids == bare.logprobs == bare.tokens == () and bare.num_tokens == 2

    tokens = convert.tokenize_from_pb(pb.TokenizeResponse(
        token_ids=[1, 2], tokens=["x", "y"], count=2, provenance=convert.provenance_to_pb(PROV)))
    assert (tokens.token_ids, tokens.tokens, tokens.count, tokens.provenance) == (
        (1, 2), ("x", "y"), 2, PROV)

    info = ModelInfo("smol", "/m", "rev1", "hf", "4.0", 2048, 100, (1, 2), "float32", "cpu")
    listed = convert.model_info_from_pb(convert.model_info_to_pb(info, True))
    assert listed.is_default and listed.name == "smol" and listed.eos_token_ids == (1, 2)
    assert ModelInfo(**{k: getattr(listed, k) for k in info.__dataclass_fields__}) == info

    load = convert.model_load_from_pb(pb.ModelLoad(model="smol", running=1, waiting=2,
                                                   max_queue=8))
    assert (load.model, load.running, load.waiting, load.max_queue) == ("smol", 1, 2, 8)


@pytest.mark.slow
async def test_local_teacher_serves_and_drains(test_model_dir):
    from teacher.serving.local import local_teacher
    from teacher.serving.sampling import SamplingParams

    engine = EngineSettings(name="hf", dtype="float32")
    async with local_teacher([f"smol={test_model_dir}"], engine) as (client, server):
        assert client.addresses == [f"127.0.0.1:{server.port}"]
        (info,) = await client.list_models()
        assert info.name == "smol" and info.is_default and info.engine == "hf"
        (result,) = await client.generate("1, 2, 3,", SamplingParams(max_new_tokens=3))
        assert isinstance(result, SampleResult) and result.completion_tokens == 3
        assert result.provenance is not None and result.provenance.model == "smol"
        # The in-process service is the one the server serves.
        assert server.service.tokenize("smol", "1, 2, 3,") == list(
            (await client.tokenize("1, 2, 3,")).token_ids)
    assert not server.service.serving  # drained and stopped on exit
