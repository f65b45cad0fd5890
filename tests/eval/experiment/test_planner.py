"""The experiment's plan: the same training settings across arms, bad config named
by its key, and the shipped experiment configs planned."""

from __future__ import annotations

import pytest

from eval.experiment import ExperimentConfig, load_experiment, plan
from teacher.core.config import ConfigError, from_dict
from tests.conftest import REPO_ROOT

SMOKE = REPO_ROOT / "configs" / "experiments" / "smoke.yaml"
DEMO = REPO_ROOT / "configs" / "experiments" / "demo.yaml"


def _config(**overrides) -> ExperimentConfig:
    base = {"name": "t", "examples": 8, "student": "smollm2-135m-instruct",
            "arms": {"ground_truth": None, "rewrite": None}, "train": {"data": {"val_size": 2}}}
    base.update(overrides)
    return from_dict(ExperimentConfig, base)


def test_plan_matches_training_settings_across_arms(tmp_path, data_dir):
    config = _config(
        arms={"ground_truth": None, "ground_truth_stm": None, "trace": None, "rewrite": None,
              "best_of_n": {"generate": {"num_candidates": 2}},
              "trace_sweep": {"kind": "trace", "subset": [0.5, 1.0]}},
        seeds=[1, 2], data_dir=str(data_dir))
    p = plan(config, tmp_path)
    names = [r.name for r in p.runs]
    assert "ground_truth-seed1" in names and "trace_sweep-sub50-seed2" in names
    assert len(names) == 2 * (5 + 2)
    # Both trace arms share one data job; best_of_n's own settings get their own.
    assert sorted(p.data_jobs) == sorted(
        ["trace-teacher", "rewrite-student", next(k for k in p.data_jobs if k.startswith("best"))])
    assert p.data_jobs["trace-teacher"].generator == "teacher"
    assert p.data_jobs["rewrite-student"].generator == "student"
    by_name = {r.name: r.train for r in p.runs}
    gt, tr = by_name["ground_truth-seed1"], by_name["trace-seed1"]
    assert (gt.sft, gt.lora, gt.seed, gt.data.limit) == (tr.sft, tr.lora, tr.seed, tr.data.limit)
    assert gt.data.source == "ground_truth" and tr.data.source == "teacher"
    assert tr.data.path == str(tmp_path / "data" / "trace-teacher")
    assert by_name["ground_truth_stm-seed1"].token_mask_ppl == 2.5
    assert by_name["trace_sweep-sub50-seed2"].data.subset == 0.5


@pytest.mark.parametrize(("overrides", "message"), [
    ({"arms": {"ground_truht": None}}, "did you mean 'ground_truth'"),
    ({"arms": {"mine": {"kind": "rewirte"}}}, "arms.mine.kind: unknown arm kind 'rewirte'"),
    ({"arms": {}}, "arms: no arms"),
    ({"task": "gsm9k"}, "task:"),
    ({"task": "wikitext-2"}, "no answers to learn"),
    ({"arms": {"trace": {"generator": "big"}}}, "arms.trace.generator: 'big'"),
    ({"arms": {"rewrite": {"generate": {"num_candiates": 2}}}}, "did you mean 'num_candidates'"),
    ({"train": {"seed": 3}}, "train.seed: set by the experiment"),
    ({"seeds": []}, "seeds:"),
])
def test_bad_config_is_named(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        plan(_config(**overrides), tmp_path)


def test_shipped_configs_plan(tmp_path, data_dir):
    for path in (SMOKE, DEMO):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# distill-eval experiment --config configs/experiments/")
        config = load_experiment(path, [f"data_dir={data_dir}"])
        p = plan(config, tmp_path)
        assert p.runs
    demo = plan(load_experiment(DEMO, [f"data_dir={data_dir}"]), tmp_path)
    assert sorted(demo.arms) == ["best_of_n", "ground_truth", "rewrite", "trace"]
    assert demo.config.student == "qwen2.5-coder-0.5b-instruct"
    assert demo.config.teacher.models["teacher"] == "qwen2.5-coder-1.5b-instruct"
    assert demo.config.eval.suite == "quick"
