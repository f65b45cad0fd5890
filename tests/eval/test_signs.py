"""The small-data warning signs on constructed numbers, the responses-differ count
from a run directory, and both in compare's report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from eval.compare import compare
from eval.signs import (
    gaps,
    growing_gap_sign,
    memorization_signs,
    oscillating_loss_sign,
    oscillation,
    over_memorization_sign,
    responses_differ,
    train_ppl_sign,
    warning_signs,
)
from teacher.core.rundir import RunDir, TrainExample, write_examples
from tests.eval.test_compare import est, record_arm
from tests.student.test_data import record, write_records


def curve(losses, start=1):
    return [{"step": start + i, "loss": loss} for i, loss in enumerate(losses)]


def test_train_ppl_above_five_is_flagged_with_its_value():
    assert train_ppl_sign(est(4.99, 0.2)) is None
    sign = train_ppl_sign({"value": 6.25, "ci": [5.5, 7.0], "n": 16})
    assert (sign.sign, sign.value, sign.threshold) == ("train_ppl", 6.25, 5.0)
    assert "6.25 [5.50, 7.00] > 5" in sign.message


def test_growing_gap_from_the_loss_history():
    history = {"train": curve([2.0, 1.8, 1.6, 1.4, 1.2, 1.0]),
               "eval": [{"step": 2, "loss": 2.0}, {"step": 4, "loss": 1.9},
                        {"step": 6, "loss": 1.85}]}
    # gaps: 2.0 - mean(2.0, 1.8) = 0.1; 1.9 - 1.5 = 0.4; 1.85 - 1.1 = 0.75
    assert [round(g, 6) for _, g in gaps(history)] == [0.1, 0.4, 0.75]
    sign = growing_gap_sign(history)
    assert sign.value == pytest.approx(0.65) and "+0.100 → +0.750" in sign.message
    steady = {"train": history["train"],
              "eval": [{"step": 2, "loss": 2.0}, {"step": 6, "loss": 1.15}]}  # 0.1 -> 0.05
    assert growing_gap_sign(steady) is None
    assert growing_gap_sign({"train": history["train"], "eval": [{"step": 6, "loss": 3}]}) is None


def test_oscillating_loss_is_movement_over_net_descent():
    smooth = {"train": curve([2.0, 1.8, 1.6, 1.5, 1.4])}
    assert oscillation(smooth) == pytest.approx((0.6, 0.6, 1.0))
    assert oscillating_loss_sign(smooth) is None
    zigzag = {"train": curve([1.2, 0.6, 1.2, 0.6, 1.2, 0.9])}  # moves 2.7, descends 0.3
    sign = oscillating_loss_sign(zigzag)
    assert sign.value == pytest.approx(9.0) and "ratio 9.0 > 3" in sign.message
    rising = {"train": curve([1.0, 1.2, 1.0, 1.3, 1.4])}
    assert math.isinf(oscillating_loss_sign(rising).value)
    assert oscillating_loss_sign({"train": curve([1.0, 2.0, 1.0, 2.0])}) is None  # too few


def test_over_memorization_reference_ppl_up_while_accuracy_holds():
    ckpts = [{"step": 10, "gsm8k/flexible_extract": est(0.30), "reference_ppl/gsm8k": est(2.0)},
             {"step": 20, "gsm8k/flexible_extract": est(0.29), "reference_ppl/gsm8k": est(2.5)}]
    sign = over_memorization_sign(ckpts)
    assert sign.value == pytest.approx(0.25)
    assert "2.000 → 2.500 (+25.0% > 10%) from step 10 to 20" in sign.message
    assert "-1.0 pts" in sign.message
    dropped = [ckpts[0], {**ckpts[1], "gsm8k/flexible_extract": est(0.20)}]  # -10 pts: not held
    assert over_memorization_sign(dropped) is None
    # Without checkpoints: the tuned model against the base.
    ref = {"value": 2.3, "base": {"value": 2.0}}
    assert over_memorization_sign([], ref, est(0.0)).value == pytest.approx(0.15)
    assert over_memorization_sign([], {"value": 2.1, "base": {"value": 2.0}}, est(0.0)) is None


def test_memorization_flag_needs_an_interval_above_zero():
    mem = {"question": {"rouge_l_above": {"value": 25.0, "ci": [5.0, 45.0]},
                        "exact_match": {"value": 10.0, "ci": [-5.0, 25.0]}}}
    [sign] = memorization_signs(mem, did=True)
    assert sign.value == 25.0 and "question/rouge_l_above +25.0 pts [5.0, 45.0]" in sign.message
    assert "DiD" in sign.message
    arm = {"train_ppl": est(7.0), "memorization": mem, "memorization_did": True,
           "loss_history": {"train": curve([2.0, 1.8, 1.6, 1.5, 1.4])}}
    assert [s.sign for s in warning_signs(arm)] == ["train_ppl", "memorization"]


def _run_dir(path: Path, kind: str, responses: dict[str, str], records: Path | None) -> RunDir:
    path.mkdir(parents=True)
    data = {"kind": kind, "task": "gsm8k", "field": "response"}
    if records is not None:
        data.update(path=str(records), mode="trace")
    (path / "manifest.json").write_text(json.dumps({"data": data, "completed": True}))
    write_examples(path / "train_examples.jsonl",
                   [TrainExample(i, [{"role": "user", "content": "q"}], r)
                    for i, r in responses.items()])
    return RunDir(path)


def test_responses_differ_counts_against_the_records_references(tmp_path):
    rows = [record(i) for i in range(4)]
    rows[1]["response"] = rows[1]["reference"]  # fell back to the reference
    write_records(tmp_path / "data", rows)
    run = _run_dir(tmp_path / "trace", "teacher",
                   {r["id"]: r["response"] for r in rows}, tmp_path / "data")
    assert responses_differ(run) == {"differ": 3, "n": 4, "share": 0.75}
    gt = _run_dir(tmp_path / "gt", "ground_truth", {r["id"]: r["reference"] for r in rows}, None)
    assert responses_differ(gt) == {"differ": 0, "n": 4, "share": 0.0}
    lost = _run_dir(tmp_path / "lost", "teacher", {"gsm8k/train/000009": "x"}, tmp_path / "data")
    assert responses_differ(lost) is None  # an example without its record: unknown


def test_compare_reports_signs_and_seed_averaged_saturation(tmp_path):
    paths = [record_arm(tmp_path, "ground_truth", gain=5.0, n_train=100, kind="ground_truth",
                        mode=None)]
    for seed, (small, big) in zip((1, 2), ((6.0, 8.0), (8.0, 8.0)), strict=True):
        paths.append(record_arm(tmp_path, f"trace-sub50-seed{seed}", gain=small, n_train=100))
        paths.append(record_arm(tmp_path, f"trace-seed{seed}", gain=big, n_train=150))
    report = compare(paths, tmp_path / "report")
    by = {a["name"]: a for a in report["arms"]}
    gt_signs = {s["sign"]: s for s in by["ground_truth"]["signs"]}
    assert gt_signs["train_ppl"]["value"] == 6.0  # record_arm: ground truth's ppl is 6
    assert "memorization" in gt_signs  # est(2.0 +- 1): interval above 0
    assert by["ground_truth"]["responses_differ"] is None  # no train_examples.jsonl
    [curve_] = report["saturation"].values()
    assert [(p["examples"], p["gain"]["value"]) for p in curve_] == [(100, 7.0), (150, 8.0)]
    assert curve_[1]["saturated"] and curve_[1]["gain"]["seeds"] == 2
    md = report["markdown"]
    assert "## Training data and warning signs" in md
    assert "⚠ **ground_truth** train_ppl: training-data perplexity under the base 6.00" in md
    assert "(saturated) [+50% data for +1.0 pts < 3]" in md
