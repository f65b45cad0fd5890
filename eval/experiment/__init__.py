"""``distill-eval experiment``: distilled vs human-data runs, end to end.

One YAML config names the teacher, the student, the task, the arms, the shared
training settings and the eval suite; the experiment then runs four stages:

1. **generate** — each teacher arm's data (``trace``, ``rewrite``, ``best_of_n``)
   with the resumable data job (:mod:`teacher.distill.job`), through a teacher
   at an address or one started in-process on a free port;
2. **train** — one LoRA student per arm and seed (:func:`student.train`), with
   the same settings for every arm: only the data differ;
3. **eval** — the base model and every run through the suite
   (:func:`eval.runner.run_eval`, results cached per model and metric);
4. **compare** — the report (:func:`eval.compare.compare`).

Every unit of work is cached in the experiment directory and checked before it
runs: a re-run after a kill continues where it stopped (the data job from its
last written record, training from its last checkpoint, eval from its last
finished metric) and a re-run of a finished experiment does nothing. Adding an
arm to the config runs only that arm. Config, data, task, suite and teacher are
all checked before any work starts.

One concern per module:

    config.py   the YAML schema (ExperimentConfig and its sections), loading, arm checks
    planner.py  the plan (data jobs, runs), preflight, and which units are current
    teacher.py  the generate stage's teacher: at an address, or started in-process
    stages.py   generate / train / eval / compare
    status.py   the live status line and status.json
    run.py      run_experiment: preflight -> stages -> experiment.json

Layout of ``--out``::

    config.yaml         the resolved config (reproduces the experiment)
    status.json         the live stage / unit / progress (``watch cat`` it)
    experiment.json     what the last invocation did with each unit, and how long it took
    data/<mode>-<model>/  teacher records (distill.record/v1 JSONL shards)
    data/questions.json   same_questions: the ids every teacher arm produced (every arm's data)
    runs/<arm>[-seed<k>]/ student run directories, with eval/<suite>/results.json
    cache/eval/         eval results per (model, adapter, metric, items)
    report/             report.md, report.json, *.png
"""

from __future__ import annotations

from eval.experiment.config import (
    ARM_KINDS,
    DEFAULT_GENERATOR,
    SCHEMA,
    STM_DEFAULT_PPL,
    TEACHER_KINDS,
    ArmSettings,
    EvalSettings,
    ExperimentConfig,
    ExperimentError,
    TeacherSettings,
    load_experiment,
    served_models,
)
from eval.experiment.planner import (
    DataJob,
    Plan,
    RunSpec,
    data_job_done,
    eval_is_current,
    plan,
    preflight,
)
from eval.experiment.run import headline, run_experiment, summary_line
from eval.experiment.stages import stage_compare, stage_eval, stage_generate, stage_train
from eval.experiment.status import STAGES, LiveView
from eval.experiment.teacher import check_teacher, teacher_client

__all__ = [
    "ARM_KINDS",
    "DEFAULT_GENERATOR",
    "SCHEMA",
    "STAGES",
    "STM_DEFAULT_PPL",
    "TEACHER_KINDS",
    "ArmSettings",
    "DataJob",
    "EvalSettings",
    "ExperimentConfig",
    "ExperimentError",
    "LiveView",
    "Plan",
    "RunSpec",
    "TeacherSettings",
    "check_teacher",
    "data_job_done",
    "eval_is_current",
    "headline",
    "load_experiment",
    "plan",
    "preflight",
    "run_experiment",
    "served_models",
    "stage_compare",
    "stage_eval",
    "stage_generate",
    "stage_train",
    "summary_line",
    "teacher_client",
]
