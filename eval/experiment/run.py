"""The experiment from one call: preflight, then the four stages, then the record
of what each unit did (``experiment.json``); and the CLI's summary of it."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import yaml

from eval.experiment.config import SCHEMA, ExperimentConfig, ExperimentError
from eval.experiment.planner import Plan, data_job_done, job_config, preflight
from eval.experiment.stages import (
    stage_compare,
    stage_eval,
    stage_generate,
    stage_train,
    write_questions,
)
from eval.experiment.status import LiveView, duration, write_json
from eval.experiment.teacher import check_teacher
from teacher.core.config import to_dict


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
               if not data_job_done(job_config(plan_, job, out, progress))]
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
        if config.same_questions:
            write_questions(plan_, out, view)
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
    write_json(out / "experiment.json", record)
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
    return f"{record['name']}: {did} in {duration(record['wall_time_s'])}"
