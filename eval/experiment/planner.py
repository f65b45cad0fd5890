"""The plan: which data jobs and runs the config asks for, what is checked before
any work (preflight), and which units are already current in ``--out``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.experiment.config import (
    STM_DEFAULT_PPL,
    TEACHER_KINDS,
    ArmSettings,
    ExperimentConfig,
    ExperimentError,
    arm_settings,
    served_models,
)
from teacher.core.config import ConfigError, deep_merge, did_you_mean, from_dict, parse_overrides


@dataclass
class DataJob:
    key: str  # data/<key>
    mode: str
    generator: str
    scorer: str
    settings: dict[str, Any]


@dataclass
class RunSpec:
    name: str  # runs/<name>
    arm: str
    seed: int
    train: Any  # student.config.TrainConfig
    data_job: str | None  # DataJob.key for teacher arms


@dataclass
class Plan:
    config: ExperimentConfig
    arms: dict[str, ArmSettings]
    data_jobs: dict[str, DataJob]
    runs: list[RunSpec]
    data_dir: Path | None


def _data_job(config: ExperimentConfig, arm: ArmSettings) -> DataJob:
    from teacher.distill.job import GenerateConfig

    known = GenerateConfig.setting_names()
    fixed = {"task", "split", "mode", "out", "model", "scorer_model", "limit", "sample_seed",
             "data_dir", "progress"}
    for key in arm.generate:
        if key in fixed:
            raise ConfigError(f"arms.*.generate.{key}: set by the experiment")
        if key not in known:
            hint = did_you_mean(key, sorted(known - fixed))
            raise ConfigError(f"arms.*.generate: unknown data-job setting {key!r}{hint}")
    generate = dict(arm.generate)
    if config.same_questions:
        generate.setdefault("fallback", "reject")  # no reference text in a teacher arm
    settings = {"concurrency": config.teacher.concurrency, **generate}
    key = f"{arm.kind}-{arm.generator}"
    if arm.scorer != "student" or generate:
        blob = json.dumps([arm.scorer, generate], sort_keys=True)
        key += "-" + hashlib.sha256(blob.encode()).hexdigest()[:8]
    return DataJob(key, arm.kind, arm.generator, arm.scorer, settings)


def _train_config(config: ExperimentConfig, plan_data_dir: Path | None, out: Path,
                  arm: ArmSettings, job: DataJob | None, seed: int, share: float | None) -> Any:
    from student.config import TrainConfig

    shared = dict(config.train)
    for key in ("model", "seed"):
        if key in shared:
            raise ConfigError(f"train.{key}: set by the experiment (student / seeds)")
    data: dict[str, Any] = {**(shared.pop("data", None) or {})}
    for key in ("source", "path", "task", "split", "limit", "subset", "mode", "sample_seed",
                "ids_file", "split_seed"):
        if key in data:
            raise ConfigError(f"train.data.{key}: set by the experiment and its arms")
    data.update(task=config.task, split="train", limit=config.examples, subset=share)
    # The new keys only where they are set, so runs made before them keep their config.
    split = split_seed(config, seed)
    if split != seed:
        data["split_seed"] = split
    if config.sample_seed is not None:
        data["sample_seed"] = config.sample_seed
    if config.same_questions:
        data["ids_file"] = str(questions_file(out))
    if job is None:
        data.update(source="ground_truth", field="reference")
    else:
        data.update(source="teacher", path=str(out / "data" / job.key), field="response",
                    mode=job.mode)
    base = {"model": config.student, "seed": seed,
            "data_dir": str(plan_data_dir) if plan_data_dir else None, "data": data, **shared}
    if arm.kind == "ground_truth_stm":
        base.setdefault("token_mask_ppl", STM_DEFAULT_PPL)
    merged = deep_merge(base, parse_overrides(arm.train))
    train = from_dict(TrainConfig, merged, "train")
    train.validate()
    return train


QUESTIONS = "questions.json"


def questions_file(out: Path) -> Path:
    """The ids every arm trains on (``same_questions``), written after generate."""
    return out / "data" / QUESTIONS


def split_seed(config: ExperimentConfig, seed: int) -> int:
    """The validation split's seed of the run with training seed ``seed``."""
    if config.split_seed is None:
        return config.seeds[0]
    if config.split_seed == "seed":
        return seed
    return int(config.split_seed)


def plan(config: ExperimentConfig, out: Path) -> Plan:
    """Every data job and run the config asks for (raises ConfigError naming the key)."""
    from teacher.core.tasks import default_data_dir, get_task

    if config.examples < 1:
        raise ConfigError(f"examples: must be >= 1, got {config.examples}")
    if not config.seeds:
        raise ConfigError("seeds: give at least one training seed")
    if len(set(config.seeds)) != len(config.seeds):
        raise ConfigError(f"seeds: repeated seeds in {config.seeds}")
    if not (config.split_seed is None or config.split_seed == "seed" or (
            isinstance(config.split_seed, int) and not isinstance(config.split_seed, bool))):
        raise ConfigError(f"split_seed: an integer, \"seed\" (each run's training seed) or "
                          f"null (the first of seeds), got {config.split_seed!r}")
    try:
        task = get_task(config.task)
    except ValueError as e:
        raise ConfigError(f"task: {e}") from None
    if task.output_type != "generate_until":
        raise ConfigError(f"task: {config.task!r} has no answers to learn (it is scored on "
                          "perplexity); use gsm8k or bbh/<subtask>")
    data_dir = Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()
    arms = arm_settings(config)
    served = served_models(config)
    jobs: dict[str, DataJob] = {}
    runs: list[RunSpec] = []
    for name, arm in arms.items():
        job = None
        if arm.kind in TEACHER_KINDS:
            if not config.teacher.address:
                for role in ("generator", "scorer"):
                    model = getattr(arm, role)
                    if model not in served:
                        raise ConfigError(
                            f"arms.{name}.{role}: {model!r} is not a teacher model "
                            f"(teacher.core.models and the student serve: {', '.join(served)})")
            job = _data_job(config, arm)
            jobs.setdefault(job.key, job)
        shares = arm.subset or [None]
        for share in shares:
            for seed in config.seeds:
                run_name = name
                if share is not None and len(shares) > 1:
                    run_name += f"-sub{round(100 * share)}"
                if len(config.seeds) > 1:
                    run_name += f"-seed{seed}"
                train = _train_config(config, data_dir, out, arm, job, seed, share)
                runs.append(RunSpec(run_name, name, seed, train, job.key if job else None))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"arms: run names collide: {names}")
    return Plan(config, arms, jobs, runs, data_dir)


def preflight(config: ExperimentConfig, out: Path) -> Plan:
    """Check everything that can be checked before any work; the plan."""
    from eval.suite import load_suite
    from teacher.core import models
    from teacher.core.tasks import get_task

    plan_ = plan(config, out)
    load_suite(config.eval.suite, config.eval.overrides)  # unknown suite / keys
    try:
        get_task(config.task).load("train", plan_.data_dir, config.examples, config.sample_seed)
    except FileNotFoundError as e:
        where = plan_.data_dir or "the hub"
        raise ExperimentError(f"data_dir {where}: no {config.task} train split ({e})") from None
    needed = {config.student}
    if not config.teacher.address and plan_.data_jobs:
        served = served_models(config)
        needed |= {served[n] for job in plan_.data_jobs.values()
                   for n in (job.generator, job.scorer)}
    for name in sorted(needed):  # prepares catalogue models that are missing
        try:
            models.resolve(name)
        except (FileNotFoundError, ValueError) as e:
            raise ExperimentError(f"model {name!r}: {e}") from None
    return plan_


# ----------------------------------------------------------------------------- what is current


def job_config(plan_: Plan, job: DataJob, out: Path, progress: bool) -> Any:
    """The data job's own config (teacher.distill.job.GenerateConfig)."""
    from teacher.distill.job import GenerateConfig

    c = plan_.config
    return GenerateConfig.from_settings(
        task=c.task, split="train", mode=job.mode, out=out / "data" / job.key,
        model=job.generator, scorer_model=job.scorer, limit=c.examples,
        sample_seed=c.sample_seed, data_dir=plan_.data_dir, progress=progress, **job.settings)


def planned_questions(plan_: Plan) -> list[str]:
    """The ids of the experiment's training questions (drawn or the first N)."""
    from teacher.core.tasks import get_task

    c = plan_.config
    return [e.id for e in get_task(c.task).load("train", plan_.data_dir, c.examples,
                                                 c.sample_seed)]


def common_questions(plan_: Plan, out: Path) -> dict[str, Any]:
    """The questions every teacher arm produced a response for (its kept records), in
    task order, and per data job what it dropped: ``same_questions``'s intersection."""
    from teacher.core.records import iter_records, output_shards

    wanted = planned_questions(plan_)
    keep = set(wanted)
    dropped: dict[str, list[str]] = {}
    for job in plan_.data_jobs.values():
        kept = {r.id for path in output_shards(out / "data" / job.key)
                for r in iter_records(path) if r.mode == job.mode and r.status != "rejected"}
        dropped[job.key] = sorted(keep - kept)
        keep &= kept
    return {"ids": [i for i in wanted if i in keep], "planned": len(wanted),
            "dropped_by": dropped}


def data_job_done(config: Any) -> bool:
    """Every example has its record and the summary is written (nothing to generate)."""
    from teacher.distill.job import SUMMARY_FILE, load_done, load_examples

    if not (config.out / SUMMARY_FILE).is_file():
        return False
    done, _ = load_done(config.out)
    return {e.id for e in load_examples(config)} <= set(done)


def eval_is_current(results_path: Path, adapter_dir: Path, suite: Any) -> bool:
    """``results_path`` holds this adapter's results for ``suite`` as run_eval would
    run it: the runner's own fit_context, so the two cannot disagree on the suite."""
    from eval.runner import fit_context
    from teacher.core.rundir import adapter_hash

    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return ((results.get("adapter") or {}).get("hash") == adapter_hash(adapter_dir)
            and results.get("suite", {}).get("config") == fit_context(suite).to_dict())
