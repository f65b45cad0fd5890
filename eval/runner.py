"""``distill-eval run``: one model (base, or base + a run's LoRA adapter) through a suite.

The model is served in-process by the teacher's engines (:mod:`eval.loading`) and
every metric's prompts go to the engine as one batch. With an adapter, the base
model is evaluated too (from the cache after the first time), so every number is
also reported as its change from the base model, with a paired interval (exact for
accuracies: Clopper–Pearson for a value, Newcombe for a paired change). Writes
``results.json`` (values, 95% intervals, ``higher_is_better``, sample sizes, the
summary's changes from the base model, per-checkpoint numbers) and ``items.jsonl``
(one row per item, model and metric: the output and its scores).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.cache import ResultCache
from eval.loading import MODEL_NAME, serve
from eval.metrics import Measure, Metric, RunMetric, registered_metrics
from eval.metrics.model import ModelFiles, ServedModel
from eval.stats import (
    Estimate,
    bootstrap,
    paired_bootstrap,
    paired_proportions,
    proportion,
)
from eval.suite import Suite
from teacher.core.rundir import RunDir, adapter_hash

log = logging.getLogger(__name__)

SCHEMA = "distill.eval/v1"
RESULTS = "results.json"
ITEMS = "items.jsonl"


@dataclass
class Subject:
    """One model to evaluate: the base, the run's final adapter, or a checkpoint."""

    label: str  # "model", "base" or "checkpoint-<step>"
    adapter_dir: Path | None
    adapter_hash: str | None
    step: int | None = None


def suite_metrics(suite: Suite) -> list[Metric]:
    """The suite's metrics with their settings, in registry order (the order of
    every table and summary line, whatever order the suite lists them in)."""
    return [suite.metric(cls.name) for cls in registered_metrics() if cls.name in suite.metrics]


# ----------------------------------------------------------------------------- aggregation


def _estimate(items: Sequence[dict[str, Any]], agg: Callable, suite: Suite) -> Estimate:
    return bootstrap(items, agg, resamples=suite.bootstrap_resamples,
                     confidence=suite.confidence, seed=suite.seed)


def _paired(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> tuple[list, list]:
    """The items both models have, in the same order (matched by id and setting)."""
    def key(it: dict[str, Any]) -> tuple:
        return (it["id"], it.get("setting"), it.get("split"))

    b_by = {key(it): it for it in b}
    pairs = [(it, b_by[key(it)]) for it in a if key(it) in b_by]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _hits(measure: Measure, items: Sequence[dict[str, Any]]) -> list[float]:
    hits = [float(it[measure.field]) for it in items]
    if any(h not in (0.0, 1.0) for h in hits):
        raise ValueError(f"measure {measure.name}: exact interval of a non-binary "
                         f"field {measure.field!r}")
    return hits


def _value(measure: Measure, items: Sequence[dict[str, Any]], suite: Suite) -> dict[str, Any]:
    """A measure's value and interval: exact (Clopper–Pearson) for a proportion of 0/1
    items (``Measure.exact``: 0/16 is [0, 20.6%], not a bootstrap's [0, 0]), else the
    percentile bootstrap."""
    if measure.exact:
        hits = _hits(measure, items)
        return {**proportion(int(sum(hits)), len(hits), suite.confidence).to_dict(),
                "method": "Clopper-Pearson"}
    return _estimate(items, measure.aggregate_fn(), suite).to_dict()


def _change(measure: Measure, a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]],
            change: Callable[[float, float], float], suite: Suite) -> dict[str, Any]:
    """``change(value of a, value of b)`` over the items both models have, with a paired
    interval: for a proportion, Newcombe's (exact McNemar p beside it), mapped through
    ``change`` at the base's value; else the paired bootstrap."""
    a2, b2 = _paired(a, b)
    if not measure.exact or not a2:
        return paired_bootstrap(a2, b2, change, measure.aggregate_fn(),
                                resamples=suite.bootstrap_resamples,
                                confidence=suite.confidence, seed=suite.seed).to_dict()
    d = paired_proportions([(_hits(measure, a2), _hits(measure, b2))],
                           confidence=suite.confidence)
    pb = math.fsum(_hits(measure, b2)) / len(b2)
    ends = sorted(change(pb + x, pb) for x in (d.low, d.high) if x is not None)
    out = {"value": change(pb + d.value, pb),
           "ci": ends if len(ends) == 2 else [None, None], "n": d.n,
           "method": "Newcombe", "p_value": d.p_value}
    if d.discordant is not None:
        out["discordant"] = list(d.discordant)
    return out


def _measure_entry(measure: Measure, group: str, items: dict[str, list[dict[str, Any]]],
                   suite: Suite) -> dict[str, Any] | None:
    model_items = measure.select(items["model"])
    if not model_items:
        return None
    entry: dict[str, Any] = {"group": group, "higher_is_better": measure.higher_is_better,
                             **_value(measure, model_items, suite)}
    if measure.description:
        entry["description"] = measure.description
    base_items = measure.select(items.get("base", []))
    if base_items and items.get("base") is not items["model"]:
        entry["base"] = _value(measure, base_items, suite)
        entry["delta"] = _change(measure, model_items, base_items, lambda x, y: x - y, suite)
    return entry


def _summary(results: dict[str, Any], items: dict[str, dict[str, list]],
             metrics: Sequence[Metric], suite: Suite, has_base: bool) -> dict[str, Any]:
    """Each metric's summary lines (target gain, forgetting per task, memorization
    increase), each in its own unit: no line averages lines of different units (BBH
    points with wikitext percents), so there is no "overall" forgetting."""
    out: dict[str, Any] = {}
    if not has_base:
        return out
    for metric in metrics:
        for term in metric.summary():
            if term.measure.name not in results["metrics"]:
                continue
            m, it = term.measure, items[metric.name]
            if metric.vs_base:  # rows already paired with the base, whose value is 0
                agg = m.aggregate_fn()
                line = _estimate(m.select(it["model"]),
                                 lambda rows, agg=agg, c=term.change: c(agg(rows), 0.0),
                                 suite).to_dict()
            else:
                line = _change(m, m.select(it["model"]), m.select(it["base"]), term.change,
                               suite)
            *parents, leaf = term.path
            node = out
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = {"unit": term.unit, **line}
    return out


# ----------------------------------------------------------------------------- the run


def fit_context(suite: Suite) -> Suite:
    """Make the served context hold what the suite's metrics need (a wikitext window
    plus its one context token)."""
    for metric in suite_metrics(suite):
        suite.engine.max_model_len = max(suite.engine.max_model_len, metric.min_context())
    return suite


def model_identity(base_path: Path, suite: Suite) -> dict[str, Any]:
    from teacher.core.models import revision_of

    return {"path": str(base_path), "revision": revision_of(base_path),
            "engine": suite.engine.name, "dtype": suite.engine.dtype}


def _subjects(run: RunDir | None, metrics: dict[str, Metric], base_only: bool) -> list[Subject]:
    """The models to evaluate: the run's adapter, the base, the run's checkpoints
    (when a metric asks for them)."""
    subjects = [Subject("base", None, None)]
    if run is not None:
        final = run.adapter_dir()
        subjects.insert(0, Subject("model", final, adapter_hash(final)))
        if any(m.wants_checkpoints() for m in metrics.values()):
            for step, name in run.checkpoints():
                d = run.adapter_dir(name)
                subjects.append(Subject(f"checkpoint-{step}", d, adapter_hash(d), step))
    if base_only:
        subjects = [s for s in subjects if s.label == "base"]
    return subjects


@dataclass
class _Plan:
    """What to compute: each model metric's data, and the metrics each subject needs."""

    skipped: dict[str, str]  # metric -> why
    data: dict[str, Any]
    metrics_of: dict[str, list[str]]  # subject label -> metric names


def _plan(suite: Suite, metrics: dict[str, Metric], run: RunDir | None,
          subjects: Sequence[Subject], data_dir: Path | None) -> _Plan:
    plan = _Plan({}, {}, {s.label: [] for s in subjects})
    for name in suite.metrics:
        metric = metrics[name]
        if metric.needs_run_dir and run is None:
            plan.skipped[name] = "needs a run directory (--adapter RUN_DIR)"
            continue
        if not metric.needs_model:
            continue
        plan.data[name] = metric.load(run, data_dir)
        for s in subjects:
            if s.step is not None and not metric.on_checkpoints:
                continue
            if metric.base_only and s.label != "base":
                continue
            if metric.vs_base and s.label == "base":
                continue
            plan.metrics_of[s.label].append(name)
    return plan


async def precompute_shared(model: str, suite: Suite, run_dirs: Sequence[Path], *,
                            data_dir: Path | None, cache: ResultCache) -> dict[str, float]:
    """Fill ``cache`` with the rows of every in-process metric (:meth:`Metric.compute_many`:
    all adapters from one load of the base), for every adapter of ``run_dirs`` (final
    and, where the metric asks, checkpoints) not cached yet; :func:`run_eval` then finds
    them. Returns the seconds each metric took."""
    from teacher.core.models import resolve

    base_path = Path(resolve(model))
    fit_context(suite)
    identity = model_identity(base_path, suite)
    timings: dict[str, float] = {}
    for metric in suite_metrics(suite):
        if not metric.in_process or not metric.needs_model:
            continue
        groups: dict[str, tuple[Any, list[tuple[dict[str, Any], Path]]]] = {}
        for run_dir in run_dirs:
            run = RunDir(run_dir)
            data = metric.load(run, data_dir)
            subset = metric.subset(data)
            for s in _subjects(run, {metric.name: metric}, False):
                if s.adapter_dir is None or (s.step is not None and not metric.on_checkpoints):
                    continue
                key = cache.key(identity, s.adapter_hash, metric.name, subset)
                if cache.get(key) is None:
                    groups.setdefault(subset, (data, []))[1].append((key, s.adapter_dir))
        for data, todo in groups.values():
            t0 = time.perf_counter()
            log.info("evaluating %d adapters at once: %s", len(todo), metric.name)
            per_adapter = await metric.compute_many(base_path, [d for _, d in todo], data,
                                                    data_dir=data_dir)
            for (key, _), rows in zip(todo, per_adapter, strict=True):
                cache.put(key, rows)
            timings[metric.name] = round(timings.get(metric.name, 0.0)
                                         + time.perf_counter() - t0, 3)
    return timings


async def precompute_served(model: str, suite: Suite, run_dirs: Sequence[Path], service: Any,
                            *, data_dir: Path | None, cache: ResultCache) -> float:
    """Fill ``cache`` with the final adapter's rows of every served metric of each run
    of ``run_dirs``, all on ``service`` (a started service hosting the base model with
    room for that many runtime LoRA adapters): one engine and no merged copy for all
    runs, their requests batched together. :func:`run_eval` then finds them (and
    starts a service only for what is left, e.g. checkpoints). Returns the wall
    seconds it took."""
    from teacher.core.models import resolve

    base_path = Path(resolve(model))
    fit_context(suite)
    identity = model_identity(base_path, suite)
    metrics = {m.name: m for m in suite_metrics(suite)}
    served = [m for m in metrics.values()
              if m.needs_model and not m.in_process and not m.base_only]
    async def one(i: int, run_dir: Path) -> None:
        run = RunDir(run_dir)
        subject = _subjects(run, metrics, False)[0]  # the final adapter
        todo = []
        for metric in served:
            data = metric.load(run, data_dir)
            key = cache.key(identity, subject.adapter_hash, metric.name, metric.subset(data))
            if cache.get(key) is None:
                todo.append((metric, data, key))
        if not todo:
            return
        name = f"run{i}-{subject.adapter_hash[:12]}"
        await service.load_adapter(MODEL_NAME, name, str(subject.adapter_dir))
        try:
            for metric, data, key in todo:
                rows = await metric.compute(ServedModel(service, name), data, data_dir=data_dir)
                cache.put(key, rows)
        finally:
            await service.unload_adapter(name)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, Path(d)) for i, d in enumerate(run_dirs)))
    return round(time.perf_counter() - t0, 3)


async def run_eval(
    model: str,
    suite: Suite,
    out: Path,
    *,
    adapter: str | Path | None = None,
    data_dir: Path | None = None,
    cache: ResultCache | None = None,
    progress: bool = True,
    base_service: Any = None,
    base_only: bool = False,
) -> dict[str, Any]:
    """Run ``suite`` on ``model`` (+ the run dir's adapter) and write the results.

    ``base_service``: an already started service hosting the base model, used for
    the base model's items (an experiment evaluates all its arms' base items in one).
    ``base_only``: only compute and cache the base model's items; nothing is written.
    """
    from teacher.core.models import resolve

    started = time.perf_counter()
    cache = cache or ResultCache()
    run = RunDir(adapter) if adapter is not None else None
    base_path = Path(resolve(model))
    if not base_path.is_dir():
        raise FileNotFoundError(f"model {model!r} resolved to {base_path}, not a local directory")
    fit_context(suite)
    identity = model_identity(base_path, suite)
    metrics = {m.name: m for m in suite_metrics(suite)}
    subjects = _subjects(run, metrics, base_only)
    plan = _plan(suite, metrics, run, subjects, data_dir)

    # Each subject's metrics from the cache where possible; the rest on the model.
    items: dict[str, dict[str, list[dict[str, Any]]]] = {}
    keys: dict[tuple[str, str], dict[str, Any]] = {}
    todo: dict[str, list[str]] = {}
    for s in subjects:
        for name in plan.metrics_of[s.label]:
            subset = metrics[name].subset(plan.data[name])
            key = cache.key(identity, s.adapter_hash, name, subset)
            keys[(s.label, name)] = key
            cached = cache.get(key)
            if cached is not None:
                items.setdefault(name, {})[s.label] = cached
            else:
                todo.setdefault(s.label, []).append(name)

    timings: dict[str, float] = {}

    async def compute(s: Subject, names: Sequence[str], model: Any) -> None:
        for name in names:
            metric, data = metrics[name], plan.data[name]
            t0 = time.perf_counter()
            bar = _progress(f"{s.label} {name}", metric.count(data), progress)
            try:
                rows = await metric.compute(model, data, data_dir=data_dir, progress=bar)
            finally:
                if bar is not None:
                    bar.close()
            timings[f"{s.label}/{name}"] = round(time.perf_counter() - t0, 3)
            cache.put(keys[(s.label, name)], rows)
            items.setdefault(name, {})[s.label] = rows

    for s in subjects:
        names = todo.get(s.label)
        if not names:
            continue
        log.info("evaluating %s: %s", s.label, ", ".join(names))
        served = [n for n in names if not metrics[n].in_process]
        if served:
            hosting = (contextlib.nullcontext(base_service)
                       if s.label == "base" and base_service is not None
                       else serve(base_path, s.adapter_dir, suite.engine))
            async with hosting as service:
                await compute(s, served, ServedModel(service))
        # After the service is shut down: these load their own copy of the model.
        own = [n for n in names if metrics[n].in_process]
        if own:
            await compute(s, own, ModelFiles(base_path, s.adapter_dir))

    if base_only:
        return {"cache": {"hits": cache.hits, "misses": cache.misses}}
    results = _report(model, base_path, identity, suite, metrics, run, subjects, plan.skipped,
                      items)
    results["cache"] = {"hits": cache.hits, "misses": cache.misses, "dir": str(cache.root)}
    results["timing"] = {"total_s": round(time.perf_counter() - started, 3), **timings}
    write_results(out, results, items)
    return results


def _report(model: str, base_path: Path, identity: dict[str, Any], suite: Suite,
            metrics: dict[str, Metric], run: RunDir | None, subjects: Sequence[Subject],
            skipped: dict[str, str], items: dict[str, dict[str, list[dict[str, Any]]]],
            ) -> dict[str, Any]:
    """The results (less cache and timing) from every metric's items. ``items`` is
    left as items.jsonl records it: without a base model (or for a base-only
    metric), the base model's rows under "model"."""
    has_base = run is not None
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "model": {"name": model, "path": str(base_path), "revision": identity["revision"],
                  "engine": suite.engine.name, "dtype": suite.engine.dtype},
        "adapter": None if run is None else {
            "run_dir": str(run.path.resolve()), "hash": subjects[0].adapter_hash,
            "data": run.manifest.get("data"), "completed": run.completed},
        "suite": {"name": suite.name, "config": suite.to_dict()},
        "metrics": {},
        "skipped": skipped,
    }
    for name in suite.metrics:
        metric = metrics[name]
        if name in skipped:
            continue
        if isinstance(metric, RunMetric):
            assert run is not None
            results[name] = metric.values(run)
            results["metrics"].update(metric.entries(results[name]))
            continue
        per = items.get(name, {})
        view = dict(per)
        if metric.base_only or not has_base:  # reported as the value under the base model
            view = {"model": per["base"]}
        for measure in metric.measures():
            entry = _measure_entry(measure, metric.group, view, suite)
            if entry is not None:
                results["metrics"][measure.name] = entry
        items[name] = view if not has_base or metric.base_only else per
    reported = [m for m in metrics.values() if m.name not in skipped]
    results["summary"] = _summary(results, items, reported, suite, has_base)
    results["checkpoints"] = _checkpoint_table(subjects, items, reported, suite)
    return results


def _checkpoint_table(subjects: Sequence[Subject], items: dict[str, dict[str, list]],
                      metrics: Sequence[Metric], suite: Suite) -> list[dict[str, Any]]:
    """Per evaluated checkpoint, the headline measure of each on_checkpoints metric."""
    rows = []
    for s in subjects:
        if s.step is None:
            continue
        row: dict[str, Any] = {"step": s.step, "checkpoint": s.label}
        for metric in metrics:
            rows_ = items.get(metric.name, {}).get(s.label) if metric.on_checkpoints else None
            if not rows_:
                continue
            m = metric.headline()
            row[m.name] = _value(m, m.select(rows_), suite)
        rows.append(row)
    return rows


def _progress(desc: str, total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", leave=False)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_results(out: Path, results: dict[str, Any],
                  items: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results = {**results, "items_file": ITEMS}
    (out / RESULTS).write_text(json.dumps(_json_safe(results), indent=2, ensure_ascii=False) + "\n",
                               encoding="utf-8")
    with (out / ITEMS).open("w", encoding="utf-8") as f:
        for metric, per in items.items():
            for subject, rows in per.items():
                for row in rows:
                    f.write(json.dumps(_json_safe({"metric": metric, "subject": subject, **row}),
                                       ensure_ascii=False) + "\n")


def run_eval_sync(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(run_eval(*args, **kwargs))
