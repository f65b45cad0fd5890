"""The experiment's plan: the same training settings across arms, bad config named
by its key, and the shipped experiment configs planned."""

from __future__ import annotations

import pytest

from eval.experiment import ExperimentConfig, load_experiment, plan
from eval.experiment.planner import common_questions, job_config, planned_questions, questions_file
from teacher.core.config import ConfigError, from_dict
from tests.conftest import REPO_ROOT

SMOKE = REPO_ROOT / "configs" / "experiments" / "smoke.yaml"
DEMO = REPO_ROOT / "configs" / "experiments" / "demo.yaml"
STANDARD = REPO_ROOT / "configs" / "experiments" / "standard.yaml"


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
    for path in (SMOKE, DEMO, STANDARD):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# distill-eval experiment --config configs/experiments/")
        config = load_experiment(path, [f"data_dir={data_dir}"])
        p = plan(config, tmp_path)
        assert p.runs
    demo = plan(load_experiment(DEMO, [f"data_dir={data_dir}"]), tmp_path)
    assert demo.config.student == "qwen2.5-coder-0.5b-instruct"
    assert demo.config.teacher.models["teacher"] == "qwen2.5-coder-1.5b-instruct"
    assert demo.config.eval.suite == "quick"


def test_demo_plans_arm_by_seed_on_the_same_questions(tmp_path, data_dir):
    p = plan(load_experiment(DEMO, [f"data_dir={data_dir}"]), tmp_path)
    assert sorted(p.arms) == ["ground_truth", "ground_truth_stm", "trace"]
    assert len(p.runs) == 3 * 3 and {r.seed for r in p.runs} == {42, 43, 44}
    assert {r.train.data.ids_file for r in p.runs} == {str(questions_file(tmp_path))}
    assert {r.train.data.sample_seed for r in p.runs} == {0}
    assert {r.train.data.split_seed or r.seed for r in p.runs} == {42}
    assert {j.settings["fallback"] for j in p.data_jobs.values()} == {"reject"}


def test_standard_gpu_config_plans_the_full_design_without_running(tmp_path, data_dir):
    from eval.suite import load_suite

    p = plan(load_experiment(STANDARD, [f"data_dir={data_dir}"]), tmp_path)
    c = p.config
    assert sorted(p.arms) == ["best_of_n", "ground_truth", "ground_truth_stm", "trace"]
    assert (c.examples, c.sample_seed, c.same_questions) == (500, 0, True)
    assert len(p.runs) == 4 * 3 and {r.seed for r in p.runs} == {42, 43, 44}
    assert len(planned_questions(p)) == 500  # 500 drawn from the 7,473 training questions
    # Arms differ in their data only: same questions, split, steps and settings.
    trains = [r.train for r in p.runs]
    assert {r.data.ids_file for r in trains} == {str(questions_file(tmp_path))}
    assert {(r.data.limit, r.data.sample_seed, r.data.val_size, r.data.split_seed or r.seed)
            for r in trains} == {(500, 0, 50, 42)}
    assert all(r.sft == trains[0].sft and r.lora == trains[0].lora for r in trains)
    assert trains[0].sft["num_train_epochs"] == 3 and not trains[0].sft["load_best_model_at_end"]
    assert {r.early_stopping_patience for r in trains} == {None}
    by_arm = {r.arm: r.train for r in p.runs}
    assert by_arm["ground_truth_stm"].token_mask_ppl == 2.5
    assert by_arm["ground_truth"].token_mask_ppl is None
    jobs = {j.mode: j for j in p.data_jobs.values()}
    assert sorted(jobs) == ["best_of_n", "trace"]
    assert {j.settings["fallback"] for j in jobs.values()} == {"reject"}
    assert (jobs["best_of_n"].generator, jobs["trace"].generator) == ("student", "teacher")
    assert jobs["best_of_n"].settings["num_candidates"] == 8
    # vLLM in bf16 on the GPU, for the teacher and for the eval suite
    assert (c.teacher.engine, c.teacher.dtype) == ("vllm", "bfloat16")
    assert c.teacher.engine_options["gpu_memory_utilization"] * 2 < 1  # two engines, one GPU
    suite = load_suite(c.eval.suite, c.eval.overrides)
    assert suite.name == "standard"
    assert (suite.engine.name, suite.engine.dtype) == ("vllm", "bfloat16")
    assert {"kl_forgetting", "bbh_mc", "memorization", "reference_ppl"} <= set(suite.metrics)
    # the header states the command and that its time is an estimate
    header = STANDARD.read_text().split("\nname:")[0]
    assert "ESTIMATE, NOT MEASURED" in header


# ----------------------------------------------------------------------------- the design


def test_three_seeds_plan_arm_by_seed_runs_paired_on_one_split(tmp_path, data_dir):
    config = _config(arms={"ground_truth": None, "ground_truth_stm": None, "trace": None},
                     seeds=[1, 2, 3], sample_seed=5, data_dir=str(data_dir))
    p = plan(config, tmp_path)
    assert [(r.name, r.arm, r.seed) for r in p.runs] == [
        (f"{arm}-seed{s}", arm, s) for arm in ("ground_truth", "ground_truth_stm", "trace")
        for s in (1, 2, 3)]
    for r in p.runs:
        assert r.train.seed == r.seed  # LoRA init and data order
        # one split for every run (the first seed's; at it, the key is left out as before)
        assert (r.train.data.split_seed or r.train.seed) == 1
        assert r.train.data.sample_seed == 5 and r.train.data.limit == 8
    assert {j.key: job_config(p, j, tmp_path, False).sample_seed
            for j in p.data_jobs.values()} == {"trace-teacher": 5}
    per_run = plan(_config(arms={"ground_truth": None}, seeds=[1, 2, 3], split_seed="seed"),
                   tmp_path)
    assert [r.train.data.split_seed for r in per_run.runs] == [None, None, None]  # = seed
    fixed = plan(_config(arms={"ground_truth": None}, seeds=[1, 2], split_seed=9), tmp_path)
    assert [r.train.data.split_seed for r in fixed.runs] == [9, 9]
    with pytest.raises(ConfigError, match="split_seed"):
        plan(_config(split_seed="each"), tmp_path)
    # one seed, no new keys: the run's config is what it was before them (it resumes)
    old = plan(_config(arms={"ground_truth": None}), tmp_path).runs[0].train.data
    assert (old.split_seed, old.sample_seed, old.ids_file) == (None, None, None)


def test_same_questions_every_arm_trains_the_intersection(tmp_path, data_dir):
    import json

    from student.data import load_examples, split_examples
    from student.trainer import split_seed_of
    from tests.student.test_data import record, write_records

    config = _config(arms={"ground_truth": None, "ground_truth_stm": None, "trace": None,
                           "best_of_n": {"generate": {"num_candidates": 2}}},
                     examples=12, sample_seed=3, same_questions=True, seeds=[1, 2, 3],
                     train={"data": {"val_size": 3}}, data_dir=str(data_dir))
    p = plan(config, tmp_path)
    assert {j.settings["fallback"] for j in p.data_jobs.values()} == {"reject"}
    assert "trace-teacher" not in p.data_jobs  # reject is not the default job's data
    drawn = planned_questions(p)
    assert len(drawn) == 12 and drawn != [f"gsm8k/train/{i:06d}" for i in range(12)]
    lost = {}
    for k, job in enumerate(p.data_jobs.values()):
        rows = []
        for i in (int(x[-6:]) for x in drawn):
            rejected = i == int(drawn[k][-6:])  # each job cannot produce another question
            rows.append(record(i, mode=job.mode, status="rejected" if rejected else "accepted",
                               response="" if rejected else f"{job.mode} answer {i}"))
        rows.append(record(99999 - k, mode=job.mode))  # an earlier config's extra question
        write_records(tmp_path / "data" / job.key, rows)
        lost[job.key] = [drawn[k]]
    common = common_questions(p, tmp_path)
    assert common["ids"] == drawn[2:] and common["dropped_by"] == lost
    questions_file(tmp_path).write_text(json.dumps(common["ids"]))
    splits = {}
    for r in p.runs:
        examples = load_examples(r.train.data, data_dir)
        train, val = split_examples(examples, r.train.data.val_size, split_seed_of(r.train))
        splits[r.name] = (tuple(e.id for e in train), tuple(e.id for e in val))
    assert len(set(splits.values())) == 1  # every arm and seed: the same questions and split
    assert len(splits["trace-seed1"][0]) == 7


def test_seed_changes_the_split_only_when_asked(tmp_path, data_dir):
    from student.data import load_examples, split_examples
    from student.trainer import split_seed_of

    def val(**overrides) -> list[list[str]]:
        p = plan(_config(arms={"ground_truth": None}, seeds=[1, 2], examples=20,
                         data_dir=str(data_dir), **overrides), tmp_path)
        return [[e.id for e in split_examples(load_examples(r.train.data, data_dir), 2,
                                              split_seed_of(r.train))[1]] for r in p.runs]

    fixed, moving = val(), val(split_seed="seed")
    assert fixed[0] == fixed[1] and moving[0] == fixed[0] and moving[1] != moving[0]
