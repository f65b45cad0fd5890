"""The distillation-mode registry and the pipeline every mode shares, over a scripted
engine (no model). Each mode's own behaviour is tested in test_mode_<name>.py."""

from __future__ import annotations

import json

import pytest

from teacher.api import teacher_pb2 as pb
from teacher.cli import build_parser
from teacher.core import records
from teacher.core.records import Record
from teacher.core.tasks import Example
from teacher.distill.job import GenerateConfig
from teacher.distill.modes import (
    DistillOptions,
    cli_names,
    distill_example,
    get_mode,
    mode_names,
    wire_value,
)
from teacher.serving import convert
from teacher.serving.errors import InvalidArgument
from teacher.serving.sampling import SamplingParams
from tests.teacher.helpers import scripted_service

EXAMPLE = Example("gsm8k/train/000001", "gsm8k", "train",
                  "Tom has 1 apple and buys 2 more. How many apples does he have?",
                  "He has 1 + 2 = 3 apples.\n#### 3", "3")
CORRECT = "Tom has one apple and buys two more, so 1 + 2 = 3.\n#### 3"
CORRECT_TOO = "He starts with 1 and adds 2 which makes 3 apples.\n#### 3"
WRONG = "Tom has one apple and buys two more, so 1 + 2 = 4.\n#### 4"
BARE = "#### 3"
ZEROSHOT = "gsm8k-cot-zeroshot"


async def distill(script, mode: str, **options) -> Record:
    """One record of EXAMPLE by ``mode``; candidate i writes ``script[i]``."""
    service = await scripted_service(script)
    options.setdefault("sampling", SamplingParams(temperature=0.75, seed=0))  # float32-exact
    options.setdefault("num_candidates", len(script))
    return await distill_example(service, EXAMPLE, DistillOptions(mode=mode, **options), "rid")


def test_the_registry_names_every_mode_once():
    assert mode_names() == ("trace", "rewrite", "best_of_n")
    assert cli_names() == ["trace", "rewrite", "best-of-n", "best_of_n"]
    assert convert.DISTILL_MODE_TO_PB == {"trace": pb.DISTILL_MODE_TRACE,
                                          "rewrite": pb.DISTILL_MODE_REWRITE,
                                          "best_of_n": pb.DISTILL_MODE_BEST_OF_N}
    with pytest.raises(LookupError, match="DISTILL_MODE_NOPE"):
        wire_value("nope")
    for name in mode_names():
        mode = get_mode(name.replace("_", "-"))
        assert mode.name == name and set(mode.templates) == {"gsm8k", "bbh"}
        assert mode.default_num_candidates == 1 or mode.default_temperature > 0


def test_the_wire_enum_the_registry_and_records_agree():
    # teacher.core must not import teacher.distill, so records.MODES spells the modes
    # out (plus "ground_truth", a record of the reference itself); this keeps them equal.
    wire = [v.name.removeprefix("DISTILL_MODE_").lower()
            for v in sorted(pb.DistillMode.DESCRIPTOR.values, key=lambda v: v.number) if v.number]
    assert tuple(wire) == mode_names()
    assert (*mode_names(), "ground_truth") == records.MODES


def test_the_cli_and_the_job_take_modes_from_the_registry(tmp_path):
    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    (action,) = [a for a in generate._actions if a.dest == "mode"]
    assert action.choices == cli_names()
    for name in mode_names():
        config = GenerateConfig(task="gsm8k", split="train", mode=name, out=tmp_path)
        assert config.sampling.temperature == get_mode(name).default_temperature


async def test_an_unknown_mode_is_invalid_argument():
    with pytest.raises(InvalidArgument, match=r"^mode: unknown mode 'distill'"):
        await distill([CORRECT], "distill")


async def test_records_keep_their_on_disk_layout():
    record = await distill([CORRECT, WRONG], "best_of_n", template=ZEROSHOT)
    data = json.loads(record.to_json())
    assert list(data["candidates"][0]) == ["text", "answer", "correct", "nll", "num_tokens",
                                           "perplexity", "frac_above_threshold",
                                           "rejected_because"]
    assert data["candidates"][0]["nll"] == record.candidates[0].nll_sum > 0
    assert list(data["provenance"]) == [
        "generator", "scorer", "template", "template_digest", "prompt_template", "sampling",
        "seed", "ppl_threshold", "require_correct", "fallback", "usage", "request_id"]
    assert data["provenance"]["sampling"] == {
        "temperature": 0.75, "top_p": 1.0, "top_k": 0, "n": 2, "max_new_tokens": 512,
        "stop": []}
    assert data["provenance"]["seed"] == 0 and data["provenance"]["request_id"] == "rid"
    assert Record.from_dict(data) == record
    assert convert.record_from_pb(convert.record_to_pb(record)) == record


async def test_the_lowest_perplexity_passing_candidate_is_chosen():
    record = await distill([CORRECT, WRONG, CORRECT_TOO, BARE], "best_of_n", template=ZEROSHOT)
    reasons = [c.rejected_because for c in record.candidates]
    assert reasons == ["", "wrong answer", "", "no reasoning"]
    best = min((0, 2), key=lambda i: record.candidates[i].perplexity)
    assert record.status == "accepted" and record.chosen_index == best
    chosen = record.candidates[best]
    assert record.response == chosen.text
    assert record.response_nll == pytest.approx(chosen.nll_sum / chosen.num_tokens)
    assert "of 2 correct candidate(s) out of 4" in record.reason


async def test_no_passing_candidate_falls_back_or_rejects():
    record = await distill([WRONG, ""], "best_of_n", template=ZEROSHOT)
    assert record.status == "fell_back" and record.response == record.reference
    assert record.reason == ("no candidate passed (1 wrong answer, 1 empty); "
                             "fell back to the reference")
    assert record.response_nll == record.reference_nll
    record = await distill([WRONG], "best_of_n", template=ZEROSHOT, fallback="reject",
                           num_candidates=1)
    assert record.status == "rejected" and record.response == ""


async def test_greedy_with_several_candidates_is_invalid_argument():
    with pytest.raises(InvalidArgument, match=r"^sampling\.temperature"):
        await distill([CORRECT, CORRECT], "best_of_n", sampling=SamplingParams(seed=0))
