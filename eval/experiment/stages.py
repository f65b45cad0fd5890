"""The four stages: generate -> train -> eval -> compare. Each checks every unit
of its work against ``--out`` first and runs only what is not current."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.experiment.planner import (
    DataJob,
    Plan,
    common_questions,
    eval_is_current,
    job_config,
    questions_file,
)
from eval.experiment.status import LiveView, duration, write_json
from eval.experiment.teacher import teacher_client


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
        view.say(f"  teacher ready in {duration(time.monotonic() - t0)} "
                 f"({plan_.config.teacher.address or 'in-process: ' + ', '.join(sorted(needed))})")
        # One job at a time: each keeps the engine busy with its own concurrency, and two
        # engines decoding at once on a small CPU only slow each other down.
        for job in pending:
            started = view.start(f"data/{job.key}", f"{job.mode} by {job.generator}")
            summary = await run_job(client, job_config(plan_, job, out, progress))
            view.finish(f"data/{job.key}", "ran", started, records=summary["records"],
                        accepted=summary["accepted"], fell_back=summary["fell_back"])


def write_questions(plan_: Plan, out: Path, view: LiveView) -> dict[str, Any]:
    """``same_questions``: the ids every teacher arm produced (data/questions.json, the
    student's data.ids_file); rewritten only when they change."""
    common = common_questions(plan_, out)
    path = questions_file(out)
    text = json.dumps(common["ids"], indent=0) + "\n"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    dropped = "; ".join(f"{key} rejected {len(ids)}" for key, ids in common["dropped_by"].items()
                        if ids)
    view.say(f"  same questions: {len(common['ids'])} of {common['planned']} for every arm"
             + (f" ({dropped})" if dropped else ""))
    if not common["ids"]:
        from eval.experiment.config import ExperimentError

        raise ExperimentError(f"same_questions: no question was produced by every teacher arm "
                              f"({dropped}); see the data jobs' summaries in {out / 'data'}")
    return common


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


async def stage_eval(plan_: Plan, out: Path, view: LiveView, progress: bool) -> list[Path]:
    from eval.cache import ResultCache
    from eval.loading import lora_rank, serve
    from eval.runner import (
        RESULTS,
        fit_context,
        precompute_served,
        precompute_shared,
        run_eval,
    )
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
        if eval_is_current(results_dir / RESULTS, RunDir(run_dir).adapter_dir(), suite):
            view.cached(unit, "results of this adapter and suite")
        else:
            pending.append((run, run_dir, results_dir, unit))
    if len(pending) > 1:
        # One engine for every run: the base model's items, then each run's adapter
        # loaded at run time (no merged copy, no start-up per run), all runs' requests
        # batched together.
        from teacher.core.models import resolve

        suite = fit_context(load_suite(c.eval.suite, c.eval.overrides))
        dirs = [RunDir(run_dir).adapter_dir() for _, run_dir, _, _ in pending]
        engine = dataclasses.replace(suite.engine, max_adapters=len(pending),
                                     max_lora_rank=max(lora_rank(d) for d in dirs))
        view.say(f"  eval ▸ base model items of {len(pending)} runs")
        async with serve(Path(resolve(c.student)), None, engine) as service:
            for _, run_dir, results_dir, _ in pending:
                await run_eval(c.student, fit_context(load_suite(c.eval.suite, c.eval.overrides)),
                               results_dir, adapter=run_dir, data_dir=plan_.data_dir,
                               cache=cache, progress=progress, base_service=service,
                               base_only=True)
            seconds = await precompute_served(
                c.student, load_suite(c.eval.suite, c.eval.overrides),
                [run_dir for _, run_dir, _, _ in pending], service,
                data_dir=plan_.data_dir, cache=cache)
        view.say(f"  eval ▸ served metrics of {len(pending)} adapters on one engine: "
                 f"{seconds:.0f} s")
    if len(pending) > 1:
        # In-process metrics of every run's adapter from one load of the base model.
        shared = await precompute_shared(
            c.student, load_suite(c.eval.suite, c.eval.overrides),
            [run_dir for _, run_dir, _, _ in pending], data_dir=plan_.data_dir, cache=cache)
        for name, seconds in shared.items():
            view.say(f"  eval ▸ {name} of {len(pending)} runs at once: {seconds:.0f} s")
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
    write_json(stamp, {"digest": digest, "results": [str(p) for p in results]})
    view.finish("report", "ran", started)
    return report
