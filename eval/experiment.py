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

Layout of ``--out``::

    config.yaml         the resolved config (reproduces the experiment)
    status.json         the live stage / unit / progress (``watch cat`` it)
    experiment.json     what the last invocation did with each unit, and how long it took
    data/<mode>-<model>/  teacher records (distill.record/v1 JSONL shards)
    runs/<arm>[-seed<k>]/ student run directories, with eval/<suite>/results.json
    cache/eval/         eval results per (model, adapter, metric, items)
    report/             report.md, report.json, *.png
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import difflib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from teacher.core.config import (
    ConfigError,
    deep_merge,
    from_dict,
    load_config,
    parse_overrides,
    to_dict,
)
from teacher.core.models import DEFAULT_STUDENT, DEFAULT_TEACHER

log = logging.getLogger(__name__)

SCHEMA = "distill.experiment/v1"
ARM_KINDS = ("ground_truth", "ground_truth_stm", "trace", "rewrite", "best_of_n")
TEACHER_KINDS = ("trace", "rewrite", "best_of_n")
# Who writes each arm's data unless the arm says otherwise: traces come from the big
# teacher; rewrites and best-of-N are the student's own words (SDFT, self-output).
DEFAULT_GENERATOR = {"trace": "teacher", "rewrite": "student", "best_of_n": "student"}
STM_DEFAULT_PPL = 2.5
STAGES = ("generate", "train", "eval", "compare")


class ExperimentError(RuntimeError):
    """An experiment that cannot run as configured; the message says why."""


# ----------------------------------------------------------------------------- config


@dataclass
class TeacherSettings:
    """Where the teacher arms' data come from."""

    # HOST:PORT[,HOST:PORT...] of running teacher servers; "" = start one in-process
    # hosting ``models`` for the generate stage only.
    address: str = ""
    token_file: str | None = None
    # Served name -> catalogue name / path. "student" defaults to the experiment's student.
    models: dict = field(default_factory=lambda: {"teacher": DEFAULT_TEACHER})
    engine: str = ""  # in-process engine: "" = vllm where installed, else hf
    dtype: str = "auto"
    max_model_len: int = 2048
    engine_options: dict = field(default_factory=dict)
    concurrency: int = 8  # examples in flight per data job
    ready_timeout_s: float = 15.0  # how long an address may take to answer the health check


@dataclass
class ArmSettings:
    """One arm: what its training data are. Training settings are shared."""

    kind: str = ""  # one of ARM_KINDS; "" = the arm's name
    generator: str = ""  # served model writing the data ("" = DEFAULT_GENERATOR[kind])
    scorer: str = "student"  # served model scoring candidates (best-of-N, perplexity)
    generate: dict = field(default_factory=dict)  # data-job settings: num_candidates, ...
    # key=value changes to the shared training config; the report flags such arms as
    # differing in more than their data.
    train: list[str] = field(default_factory=list)
    subset: list[float] = field(default_factory=list)  # e.g. [0.25, 0.5, 1.0]: a sweep


@dataclass
class EvalSettings:
    suite: str = "quick"  # a shipped suite name or a YAML path
    overrides: list[str] = field(default_factory=list)  # suite key=value, e.g. gsm8k.limit=10


@dataclass
class ExperimentConfig:
    name: str = ""
    task: str = "gsm8k"  # the target task (train split = the training examples)
    examples: int = 32  # the first N training examples of the task
    data_dir: str | None = None  # default: $DISTILL_DATA_DIR or ../shared/data, else the hub
    student: str = DEFAULT_STUDENT
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    arms: dict = field(default_factory=dict)  # name -> ArmSettings mapping (None = defaults)
    seeds: list[int] = field(default_factory=lambda: [42])
    # The student job's config (student.config.TrainConfig) shared by every arm; the
    # experiment sets model, seed and the data source of each arm.
    train: dict = field(default_factory=dict)
    eval: EvalSettings = field(default_factory=EvalSettings)


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


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    config = load_config(ExperimentConfig, path, overrides)
    if not config.name:
        config.name = Path(path).stem
    return config


def _arm_settings(config: ExperimentConfig) -> dict[str, ArmSettings]:
    if not config.arms:
        raise ConfigError(f"arms: no arms; name some of {', '.join(ARM_KINDS)}")
    arms: dict[str, ArmSettings] = {}
    for name, raw in config.arms.items():
        arm = from_dict(ArmSettings, raw or {}, f"arms.{name}")
        arm.kind = arm.kind or str(name)
        if arm.kind not in ARM_KINDS:
            where = f"arms.{name}.kind" if raw and "kind" in raw else f"arms.{name}"
            close = difflib.get_close_matches(arm.kind, ARM_KINDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown arm kind {arm.kind!r}{hint} (kinds: "
                              f"{', '.join(ARM_KINDS)}; an arm of another name sets kind)")
        if not str(name).replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"arms.{name}: arm names are letters, digits, '_' and '-'")
        for share in arm.subset:
            if not isinstance(share, int | float) or not 0 < share <= 1:
                raise ConfigError(f"arms.{name}.subset: shares must be in (0, 1], got {share!r}")
        if arm.kind in TEACHER_KINDS:
            arm.generator = arm.generator or DEFAULT_GENERATOR[arm.kind]
        arms[str(name)] = arm
    return arms


def served_models(config: ExperimentConfig) -> dict[str, str]:
    """Name -> source of the models an in-process teacher hosts."""
    served = dict(config.teacher.models)
    served.setdefault("student", config.student)
    return served


def _data_job(config: ExperimentConfig, arm: ArmSettings) -> DataJob:
    from teacher.distill.job import GenerateConfig

    known = GenerateConfig.setting_names()
    fixed = {"task", "split", "mode", "out", "model", "scorer_model", "limit", "data_dir",
             "progress"}
    for key in arm.generate:
        if key in fixed:
            raise ConfigError(f"arms.*.generate.{key}: set by the experiment")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known - fixed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"arms.*.generate: unknown data-job setting {key!r}{hint}")
    settings = {"concurrency": config.teacher.concurrency, **arm.generate}
    key = f"{arm.kind}-{arm.generator}"
    if arm.scorer != "student" or arm.generate:
        blob = json.dumps([arm.scorer, arm.generate], sort_keys=True)
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
    for key in ("source", "path", "task", "split", "limit", "subset", "mode"):
        if key in data:
            raise ConfigError(f"train.data.{key}: set by the experiment and its arms")
    data.update(task=config.task, split="train", limit=config.examples, subset=share)
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


def plan(config: ExperimentConfig, out: Path) -> Plan:
    """Every data job and run the config asks for (raises ConfigError naming the key)."""
    from teacher.core.tasks import default_data_dir, get_task

    if config.examples < 1:
        raise ConfigError(f"examples: must be >= 1, got {config.examples}")
    if not config.seeds:
        raise ConfigError("seeds: give at least one training seed")
    if len(set(config.seeds)) != len(config.seeds):
        raise ConfigError(f"seeds: repeated seeds in {config.seeds}")
    try:
        task = get_task(config.task)
    except ValueError as e:
        raise ConfigError(f"task: {e}") from None
    if task.output_type != "generate_until":
        raise ConfigError(f"task: {config.task!r} has no answers to learn (it is scored on "
                          "perplexity); use gsm8k or bbh/<subtask>")
    data_dir = Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()
    arms = _arm_settings(config)
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


# ----------------------------------------------------------------------------- live view


class LiveView:
    """The stage, unit and progress: printed as it changes and kept in status.json.

    Each job below draws its own progress bar (examples generated, training steps,
    items evaluated); this is the line above them saying where the experiment is.
    """

    def __init__(self, out: Path, name: str, quiet: bool = False):
        self.out = out
        self.name = name
        self.quiet = quiet
        self.started = time.monotonic()
        self.units: list[dict[str, Any]] = []
        self.status: dict[str, Any] = {"experiment": name, "state": "running", "stage": None,
                                       "unit": None, "progress": None, "pid": os.getpid()}

    def _write(self) -> None:
        self.status["elapsed_s"] = round(time.monotonic() - self.started, 1)
        _write_json(self.out / "status.json", self.status)

    def stage(self, index: int, stage: str, total: int) -> None:
        self.status.update(stage=stage, unit=None, progress=[0, total])
        self._write()
        self.say(f"stage {index}/{len(STAGES)} {stage}: {total} unit(s)")

    def start(self, unit: str, what: str) -> float:
        self.status["unit"] = unit
        self._write()
        self.say(f"  {self.status['stage']} ▸ {unit}: {what}")
        return time.monotonic()

    def finish(self, unit: str, state: str, started: float, **extra: Any) -> None:
        seconds = round(time.monotonic() - started, 1)
        self.units.append({"stage": self.status["stage"], "unit": unit, "state": state,
                           "seconds": seconds, **extra})
        self.status["progress"][0] += 1
        self._write()
        if state != "cached":
            self.say(f"  {self.status['stage']} ▸ {unit}: {state} in {_duration(seconds)}")

    def cached(self, unit: str, why: str) -> None:
        self.units.append({"stage": self.status["stage"], "unit": unit, "state": "cached",
                           "seconds": 0.0, "why": why})
        self.status["progress"][0] += 1
        self._write()
        self.say(f"  {self.status['stage']} ▸ {unit}: cached ({why})")

    def done(self, state: str = "done") -> None:
        self.status.update(state=state, stage=None, unit=None)
        self._write()

    def say(self, line: str) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        elapsed = _duration(time.monotonic() - self.started)
        tqdm.write(f"[{self.name} {elapsed}] {line}", file=sys.stderr)


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n",
                   encoding="utf-8")
    tmp.replace(path)


# ----------------------------------------------------------------------------- stages


def _job_config(plan_: Plan, job: DataJob, out: Path, progress: bool) -> Any:
    from teacher.distill.job import GenerateConfig

    c = plan_.config
    return GenerateConfig.from_settings(
        task=c.task, split="train", mode=job.mode, out=out / "data" / job.key,
        model=job.generator, scorer_model=job.scorer, limit=c.examples,
        data_dir=plan_.data_dir, progress=progress, **job.settings)


def data_job_done(config: Any) -> bool:
    """Every example has its record and the summary is written (nothing to generate)."""
    from teacher.distill.job import SUMMARY_FILE, load_done, load_examples

    if not (config.out / SUMMARY_FILE).is_file():
        return False
    done, _ = load_done(config.out)
    return {e.id for e in load_examples(config)} <= set(done)


@contextlib.asynccontextmanager
async def teacher_client(plan_: Plan, needed: set[str]) -> AsyncIterator[Any]:
    """A client for the configured address, or for an in-process server hosting
    ``needed`` (started on a free port and stopped on exit)."""
    from teacher.serving.client import TeacherClient
    from teacher.serving.engine import EngineSettings
    from teacher.serving.local import local_teacher
    from teacher.serving.service import Limits

    t = plan_.config.teacher
    if t.address:
        token = Path(t.token_file).read_text().strip() if t.token_file else None
        async with TeacherClient(t.address, token=token, timeout_s=None) as client:
            yield client
        return
    served = served_models(plan_.config)
    engine = EngineSettings(name=t.engine, dtype=t.dtype, max_model_len=t.max_model_len,
                            options=dict(t.engine_options))
    async with local_teacher([f"{name}={served[name]}" for name in served if name in needed],
                             engine, Limits(max_queue=4096), timeout_s=None) as (client, _):
        yield client


async def check_teacher(plan_: Plan, jobs: Sequence[DataJob]) -> None:
    """An address must answer and serve every model the pending jobs name."""
    import grpc

    from teacher.serving.client import TeacherClient, TeacherUnavailableError

    t = plan_.config.teacher
    if not t.address or not jobs:
        return
    token = Path(t.token_file).read_text().strip() if t.token_file else None
    async with TeacherClient(t.address, token=token, timeout_s=t.ready_timeout_s,
                             retries=0) as client:
        try:
            await client.wait_ready(timeout_s=t.ready_timeout_s)
            served = [m.name for m in await client.list_models()]
        except (TeacherUnavailableError, grpc.aio.AioRpcError) as e:
            details = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            raise ExperimentError(f"teacher.address {t.address}: the teacher does not answer "
                                  f"({details})") from None
    for job in jobs:
        for role, name in (("generator", job.generator), ("scorer", job.scorer)):
            if name not in served:
                raise ExperimentError(f"arms ({job.mode}).{role}: {name!r} is not served by "
                                      f"the teacher at {t.address} (it serves {served})")


async def stage_generate(plan_: Plan, out: Path, view: LiveView, progress: bool,
                         pending: Sequence[DataJob]) -> None:
    """Run the ``pending`` data jobs (the others were found complete by the caller)."""
    from teacher.distill.job import run_job

    jobs = list(plan_.data_jobs.values())
    view.stage(1, "generate", len(jobs))
    for job in jobs:
        if job not in pending:
            view.cached(f"data/{job.key}", "every example has its record")
    if not pending:
        return
    needed = {name for job in pending for name in (job.generator, job.scorer)}
    t0 = time.monotonic()
    async with teacher_client(plan_, needed) as client:
        view.say(f"  teacher ready in {_duration(time.monotonic() - t0)} "
                 f"({plan_.config.teacher.address or 'in-process: ' + ', '.join(sorted(needed))})")
        # One job at a time: each keeps the engine busy with its own concurrency, and two
        # engines decoding at once on a small CPU only slow each other down.
        for job in pending:
            started = view.start(f"data/{job.key}", f"{job.mode} by {job.generator}")
            summary = await run_job(client, _job_config(plan_, job, out, progress))
            view.finish(f"data/{job.key}", "ran", started, records=summary["records"],
                        accepted=summary["accepted"], fell_back=summary["fell_back"])


def stage_train(plan_: Plan, out: Path, view: LiveView) -> None:
    from student.trainer import read_manifest, train

    view.stage(2, "train", len(plan_.runs))
    for run in plan_.runs:
        run_dir = out / "runs" / run.name
        manifest = read_manifest(run_dir) if run_dir.is_dir() else None
        if manifest and manifest.get("completed"):
            # train() checks the config and data still match, and does nothing if so.
            train(run.train, run_dir, resume=True)
            view.cached(f"runs/{run.name}", "completed run")
            continue
        what = f"{run.arm} arm, seed {run.seed}" + (
            f", {run.train.data.subset:.0%} of the data" if run.train.data.subset else "")
        state = "resumed" if manifest else "ran"
        started = view.start(f"runs/{run.name}", what)
        train(run.train, run_dir, resume=True)
        view.finish(f"runs/{run.name}", state, started)


def _eval_is_current(results_path: Path, adapter_dir: Path, suite: Any) -> bool:
    from eval.runner import fit_context
    from teacher.core.rundir import adapter_hash

    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return ((results.get("adapter") or {}).get("hash") == adapter_hash(adapter_dir)
            and results.get("suite", {}).get("config") == fit_context(suite).to_dict())


async def stage_eval(plan_: Plan, out: Path, view: LiveView, progress: bool) -> list[Path]:
    from eval.cache import ResultCache
    from eval.loading import serve
    from eval.runner import RESULTS, fit_context, run_eval
    from eval.suite import load_suite
    from teacher.core.rundir import RunDir

    c = plan_.config
    view.stage(3, "eval", len(plan_.runs))
    cache = ResultCache(out / "cache" / "eval")
    paths, pending = [], []
    for run in plan_.runs:
        suite = load_suite(c.eval.suite, c.eval.overrides)
        run_dir = out / "runs" / run.name
        results_dir = run_dir / "eval" / suite.name
        paths.append(results_dir / RESULTS)
        unit = f"runs/{run.name}/eval/{suite.name}"
        if _eval_is_current(results_dir / RESULTS, RunDir(run_dir).adapter_dir(), suite):
            view.cached(unit, "results of this adapter and suite")
        else:
            pending.append((run, run_dir, results_dir, unit))
    if len(pending) > 1:  # every arm's base-model items from one base engine
        from teacher.core.models import resolve

        suite = fit_context(load_suite(c.eval.suite, c.eval.overrides))
        view.say(f"  eval ▸ base model items of {len(pending)} runs")
        async with serve(Path(resolve(c.student)), None, suite.engine) as base_service:
            for _, run_dir, results_dir, _ in pending:
                await run_eval(c.student, fit_context(load_suite(c.eval.suite, c.eval.overrides)),
                               results_dir, adapter=run_dir, data_dir=plan_.data_dir,
                               cache=cache, progress=progress, base_service=base_service,
                               base_only=True)
    for run, run_dir, results_dir, unit in pending:
        suite = load_suite(c.eval.suite, c.eval.overrides)
        started = view.start(unit, f"{suite.name} suite on base + {run.name} adapter")
        results = await run_eval(c.student, suite, results_dir, adapter=run_dir,
                                 data_dir=plan_.data_dir, progress=progress,
                                 cache=ResultCache(out / "cache" / "eval"))
        view.finish(unit, "ran", started, cache_hits=results["cache"]["hits"],
                    cache_misses=results["cache"]["misses"])
    return paths


def _files_digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def stage_compare(results: Sequence[Path], out: Path, view: LiveView) -> dict[str, Any]:
    from eval.compare import compare

    view.stage(4, "compare", 1)
    report_dir = out / "report"
    digest = _files_digest(results)
    stamp = report_dir / "inputs.json"
    if (report_dir / "report.md").is_file() and stamp.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(stamp.read_text()).get("digest") == digest:
                view.cached("report", "same results as last time")
                return json.loads((report_dir / "report.json").read_text())
    started = view.start("report", f"comparing {len(results)} run(s) with the base model")
    report = compare(list(results), report_dir)
    _write_json(stamp, {"digest": digest, "results": [str(p) for p in results]})
    view.finish("report", "ran", started)
    return report


# ----------------------------------------------------------------------------- the run


def preflight(config: ExperimentConfig, out: Path) -> Plan:
    """Check everything that can be checked before any work; the plan."""
    from eval.suite import load_suite
    from teacher.core import models
    from teacher.core.tasks import get_task

    plan_ = plan(config, out)
    load_suite(config.eval.suite, config.eval.overrides)  # unknown suite / keys
    try:
        get_task(config.task).load("train", plan_.data_dir, config.examples)
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


def run_experiment(config: ExperimentConfig, out: Path, *, progress: bool = True,
                   quiet: bool = False) -> dict[str, Any]:
    """Run (or continue) the experiment into ``out``; returns experiment.json's content."""
    out = Path(out).expanduser().absolute()
    plan_ = preflight(config, out)
    return asyncio.run(_run(plan_, out, progress=progress, quiet=quiet))


async def _run(plan_: Plan, out: Path, *, progress: bool, quiet: bool) -> dict[str, Any]:
    from teacher.distill.job import JobError

    config = plan_.config
    pending = [job for job in plan_.data_jobs.values()
               if not data_job_done(_job_config(plan_, job, out, progress))]
    await check_teacher(plan_, pending)

    out.mkdir(parents=True, exist_ok=True)
    resolved = to_dict(config)
    text = (f"# distill-eval experiment --config {out / 'config.yaml'} --out {out}\n"
            + yaml.safe_dump(resolved, sort_keys=False))
    config_file = out / "config.yaml"
    if not config_file.is_file() or config_file.read_text(encoding="utf-8") != text:
        config_file.write_text(text, encoding="utf-8")
    view = LiveView(out, config.name, quiet=quiet)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    try:
        try:
            await stage_generate(plan_, out, view, progress, pending)
        except JobError as e:
            raise ExperimentError(str(e)) from None
        stage_train(plan_, out, view)
        results = await stage_eval(plan_, out, view, progress)
        report = stage_compare(results, out, view)
    except BaseException:
        view.done("failed")
        raise
    view.done()
    record = {"schema": SCHEMA, "name": config.name, "started_at": started_at,
              "wall_time_s": round(time.monotonic() - t0, 1), "units": view.units,
              "report": str(out / "report" / "report.md"),
              "plots": [str(out / "report" / p) for p in report.get("plots", [])]}
    _write_json(out / "experiment.json", record)
    return record


def headline(out: Path) -> str:
    """The report's first table (arms x headline metrics)."""
    text = (Path(out) / "report" / "report.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        return ""
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[start:end])


def summary_line(record: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for unit in record["units"]:
        counts[unit["state"]] = counts.get(unit["state"], 0) + 1
    did = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return f"{record['name']}: {did} in {_duration(record['wall_time_s'])}"

