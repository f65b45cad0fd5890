"""Distillation modes (teacher.distill.modes) over a real gRPC server with the real small model.

SmolLM2-135M cannot do GSM8K, so these tests check plumbing and record validity
(candidates scored, fallbacks recorded, provenance complete), not quality.
"""

from __future__ import annotations

import json
import math

import grpc
import pytest

from teacher.core.records import SCHEMA, Candidate, Record, read_records
from teacher.core.tasks import Example, get_task
from teacher.core.tasks.gsm8k import GSM8K_COT_8SHOT, GSM8K_REWRITE, GSM8K_REWRITE_V1
from teacher.core.templates import get_template
from teacher.distill.job import GenerateConfig, run_job
from teacher.distill.modes import DistillOptions, get_mode, normalize_mode, reasoning_words
from teacher.distill.modes.rewrite import template_leak
from teacher.serving import convert
from teacher.serving.client import TeacherClient
from teacher.serving.engine import EngineSettings, load_engine
from teacher.serving.sampling import SamplingParams
from teacher.serving.server import ServerConfig, TeacherServer
from teacher.serving.service import ModelHost, TeacherService

# float32-exact values: SamplingParams carries floats, not doubles.
TINY = SamplingParams(temperature=0.75, max_new_tokens=8, seed=7)

# ---------------------------------------------------------------- no model


def test_modes_and_leaks():
    assert normalize_mode("best-of-n") == "best_of_n"
    with pytest.raises(ValueError, match="unknown mode"):
        normalize_mode("distill")
    assert template_leak("Using the Reference Answer as a guide: 4") is not None
    assert template_leak("Here is your response.") is not None
    assert template_leak('... on its own last line in the form "#### <number>".') is not None
    assert template_leak("### Response:\n4") is not None
    assert template_leak("She has 4 apples.\n#### 4") is None


def test_bare_answers_have_no_reasoning():
    assert reasoning_words("#### 72") == 0
    assert reasoning_words("#### 10\nWeng earned $10 for babysitting.") == 0
    assert reasoning_words("48 / 2 = 24 in May, 48 + 24 = 72 in all.\n#### 72") >= 5
    assert reasoning_words("So 48 + 24 = 72 clips. The answer is 72.") == 7
    assert reasoning_words("So the answer is (A).") == 1


def test_distill_templates_are_versioned_and_render():
    assert get_template("gsm8k-sdft-rewrite@v1") is GSM8K_REWRITE_V1
    assert get_template("gsm8k-sdft-rewrite") is GSM8K_REWRITE  # the newest: v2
    assert get_mode("trace").templates["gsm8k"] is GSM8K_COT_8SHOT  # few-shot CoT
    rewrite = GSM8K_REWRITE_V1.render(question="Q {x}", reference="R\n#### 1")[0]["content"]
    assert rewrite.startswith("Below are an instruction that describes a task along with a "
                              "reference answer. Using the reference answer as a guide, write "
                              "your own response.")
    assert "### Instruction:\nQ {x}\n### Reference Answer:\nR\n#### 1\n### Response:\n" in rewrite
    system, user = GSM8K_REWRITE.render(question="Q {x}", reference="R {y}\n#### 1")
    assert system["role"] == "system" and "R {y}\n#### 1" in system["content"]
    assert user["content"].startswith("Q {x}\n\nSolve the problem step by step.")


def _record() -> Record:
    return Record(
        id="gsm8k/train/000001",
        task="gsm8k",
        split="train",
        mode="best_of_n",
        prompt=[{"role": "user", "content": "Q?"}],
        question="Q?",
        reference="r\n#### 3",
        target="3",
        response="a\n#### 3",
        status="accepted",
        reason="lowest perplexity",
        chosen_index=1,
        candidates=[
            Candidate(text="x", answer=None, correct=False, nll_sum=2.5, num_tokens=1,
                      perplexity=math.exp(2.5), frac_above_threshold=1.0,
                      rejected_because="no answer"),
            Candidate(text="a\n#### 3", answer="3", correct=True, nll_sum=1.25, num_tokens=5,
                      perplexity=math.exp(0.25), frac_above_threshold=0.0),
        ],
        response_nll=0.25,
        response_tokens=5,
        reference_nll=0.5,
        reference_tokens=4,
        response_perplexity=math.exp(0.25),
        response_frac_above_threshold=0.0,
        reference_perplexity=math.exp(0.5),
        reference_frac_above_threshold=0.25,
        provenance={
            "generator": {"model": "g", "revision": "r1", "engine": "hf", "engine_version": "5"},
            "scorer": {"model": "s", "revision": "r2", "engine": "hf", "engine_version": "5"},
            "template": "gsm8k-cot-zeroshot@v1",
            "template_digest": "abc",
            "prompt_template": "gsm8k-cot-zeroshot@v1",
            "sampling": {"temperature": 0.5, "top_p": 0.75, "top_k": 0, "n": 2,
                         "max_new_tokens": 16, "stop": ["Q:"]},
            "seed": 2**62 + 1,
            "ppl_threshold": 2.5,
            "require_correct": True,
            "fallback": "reference",
            "usage": {"prompt_tokens": 20, "completion_tokens": 9},
            "request_id": "abc",
        },
    )


def test_record_survives_the_wire_unchanged():
    record = _record()
    assert convert.record_from_pb(convert.record_to_pb(record)) == record
    missing = Record(**{**record.__dict__, "chosen_index": None, "response_nll": None})
    assert convert.record_from_pb(convert.record_to_pb(missing)) == missing


def test_distill_request_round_trip():
    example = Example("gsm8k/train/000002", "gsm8k", "train", "Q?", "r\n#### 3", "3")
    options = DistillOptions(mode="trace", model="t", scorer_model="s", num_candidates=3,
                             template="gsm8k-cot-8shot", sampling=TINY, ppl_threshold=3.0,
                             require_correct=False, fallback="reject")
    back = convert.distill_request_from_pb(convert.distill_request_to_pb(example, options))
    assert back[0] == example
    assert back[1].sampling.seed == 7 and back[1].sampling.max_new_tokens == 8
    assert back[1] == options


# ---------------------------------------------------------------- real server


@pytest.fixture(scope="module")
async def server(test_model_dir):
    """Two named models (generator and scorer) on one real grpc.aio server."""
    cfg = ServerConfig(models=[], host="127.0.0.1", port=0)
    settings = EngineSettings(name="hf", dtype="float32")
    hosts = [
        ModelHost(name, load_engine(settings, str(test_model_dir), name, "test"), 64)
        for name in ("teacher", "scorer")
    ]
    srv = TeacherServer(TeacherService(hosts, cfg.limits), cfg)
    await srv.start()
    yield srv
    await srv.drain_and_stop()


@pytest.fixture
async def client(server):
    async with TeacherClient(f"127.0.0.1:{server.port}", retries=1, backoff_s=0.05) as c:
        yield c


def check_record(record: Record, mode: str, n: int) -> None:
    """The record schema: everything the issue asks a record to carry."""
    assert Record.from_dict(json.loads(record.to_json())) == record
    assert record.schema == SCHEMA and record.mode == mode
    assert record.prompt and record.prompt[-1]["role"] == "user"
    assert record.question in record.prompt[-1]["content"]
    assert record.reference.endswith(f"#### {record.target}")
    assert len(record.candidates) == n
    for c in record.candidates:
        if c.text:
            assert c.num_tokens > 0 and c.nll_sum >= 0 and c.perplexity >= 1
            assert math.isclose(c.perplexity, math.exp(c.nll_sum / c.num_tokens), rel_tol=1e-6)
            assert 0 <= c.frac_above_threshold <= 1
        assert c.correct in (True, False)
        assert c.correct or c.rejected_because or mode == "trace"
    assert record.reference_tokens > 0 and record.reference_nll > 0
    assert record.status in ("accepted", "fell_back")
    assert record.reason
    if record.status == "fell_back":
        assert record.response == record.reference and record.chosen_index is None
        assert all(c.rejected_because for c in record.candidates)
        assert record.response_nll == record.reference_nll
    else:
        chosen = record.candidates[record.chosen_index]
        assert record.response == chosen.text and not chosen.rejected_because
        assert record.response_tokens == chosen.num_tokens
    prov = record.provenance
    assert prov["generator"]["model"] == "teacher" and prov["scorer"]["model"] == "scorer"
    assert prov["generator"]["revision"] == "test" and prov["generator"]["engine"] == "hf"
    assert get_template(prov["template"]).digest == prov["template_digest"]
    assert prov["sampling"]["n"] == n and isinstance(prov["seed"], int)
    assert prov["ppl_threshold"] == 2.5
    assert prov["usage"]["completion_tokens"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["trace", "rewrite", "best-of-n"])
async def test_each_mode_on_8_gsm8k_examples(mode, client, data_dir, tmp_path):
    n = 1 if mode == "rewrite" else 2  # SDFT rewrites once, greedily
    # Each mode's default prompt: trace's 8-shot completion prompt, best-of-n's the
    # student's zero-shot chat training prompt (the record's prompt).
    config = GenerateConfig.from_settings(
        task="gsm8k", split="train", mode=mode, out=tmp_path, model="teacher",
        scorer_model="scorer", limit=8, data_dir=data_dir, num_candidates=n,
        max_new_tokens=8, progress=False,
    )
    summary = await run_job(client, config)
    records = read_records(tmp_path)
    ids = [e.id for e in get_task("gsm8k").load("train", data_dir, 8)]
    assert sorted(r.id for r in records) == ids
    for record in records:
        check_record(record, config.mode, n)
        # What the generator was sent, in tokens of the real tokenizer: best-of-n's is
        # the record's (training) prompt; trace's 8-shot prompt is far longer.
        train_prompt = (await client.tokenize(record.prompt, model="teacher")).count
        sent = record.provenance["usage"]["prompt_tokens"]
        if config.mode == "best_of_n":
            assert sent == n * train_prompt
            assert record.provenance["template"] == "gsm8k-cot-zeroshot@v1"
        elif config.mode == "trace":
            assert sent > n * (train_prompt + 500)
            assert record.provenance["template"] == "gsm8k-cot-8shot@v1"
        assert record.provenance["prompt_template"] == "gsm8k-cot-zeroshot@v1"
    assert summary["records"] == 8
    assert summary["accepted"] + summary["fell_back"] + summary["rejected"] == 8
    assert summary["reference"]["tokens"] == sum(r.reference_tokens for r in records)
    datasets = pytest.importorskip("datasets")
    table = datasets.load_dataset("json", data_files=str(tmp_path / "*.jsonl"), split="train")
    assert table.num_rows == 8 and set(table["id"]) == set(ids)


@pytest.mark.slow
async def test_trace_keep_incorrect_chooses_lowest_perplexity(client, data_dir):
    example = get_task("gsm8k").load("train", data_dir, 1)[0]
    sampling = SamplingParams(temperature=0.75, max_new_tokens=16, seed=7)
    options = DistillOptions(mode="trace", model="teacher", scorer_model="scorer",
                             num_candidates=3, template="gsm8k-cot-zeroshot",
                             sampling=sampling, require_correct=False)
    record = await client.distill(example, options)
    check_record(record, "trace", 3)
    assert record.status == "accepted"  # SmolLM2 writes something, right or wrong
    usable = [c.perplexity for c in record.candidates if c.text]
    assert record.candidates[record.chosen_index].perplexity == min(usable)
    # Same seed, same candidates: a restarted job regenerates what it lost identically.
    again = await client.distill(example, options)
    assert [c.text for c in again.candidates] == [c.text for c in record.candidates]


@pytest.mark.slow
async def test_reject_on_failure(client, data_dir):
    example = get_task("gsm8k").load("train", data_dir, 1)[0]
    options = DistillOptions(mode="rewrite", model="teacher", sampling=SamplingParams(
        max_new_tokens=4, seed=0), fallback="reject")
    record = await client.distill(example, options)
    # Four tokens cannot end in "#### 72": the rewrite fails and nothing is kept.
    assert record.status == "rejected" and record.response == ""
    assert "no candidate passed" in record.reason
    assert record.provenance["scorer"]["model"] == "teacher"  # scorer defaults to the generator


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"task": "gsm9k"}, "example.task"),
        ({"task": "wikitext-2"}, "example.task"),
        ({"question": " "}, "example.question"),
        ({"answer": "no final line"}, "example.reference"),
    ],
)
async def test_bad_examples_are_invalid_argument(client, change, field):
    fields = {"id": "x/1", "task": "gsm8k", "split": "train", "question": "Q?",
              "answer": "r\n#### 3", "target": "3", **change}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.distill(Example(**fields), DistillOptions(mode="rewrite", sampling=TINY))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "field"),
    [
        (DistillOptions(mode="best_of_n", num_candidates=3,
                        sampling=SamplingParams(max_new_tokens=4)), "sampling.temperature"),
        (DistillOptions(mode="trace", scorer_model="nope", sampling=TINY), "scorer_model"),
        (DistillOptions(mode="trace", template="bbh-cot-zeroshot", sampling=TINY), "template"),
        (DistillOptions(mode="rewrite", template="gsm8k-cot-8shot", sampling=TINY),
         "template"),
    ],
)
async def test_bad_options_are_invalid_argument(client, data_dir, options, field):
    example = get_task("gsm8k").load("train", data_dir, 1)[0]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.distill(example, options)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)
