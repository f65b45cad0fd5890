"""``distill-eval run``: one model (base, or base + a run's LoRA adapter) through a suite.

The model is served in-process by the teacher's engines (:mod:`eval.loading`) and
every metric's prompts go to the engine as one batch. With an adapter, the base
model is evaluated too (from the cache after the first time), so every number is
also reported as its change from the base model, with a paired bootstrap interval.
Writes ``results.json`` (values, 95% intervals, ``higher_is_better``, sample
sizes, the forgetting score, per-checkpoint numbers) and ``items.jsonl`` (one row
per item, model and metric: the output and its scores).
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
from eval.memorization import score_copy, split_response
from eval.metrics import (
    METRICS,
    Measure,
    bbh_subtasks,
    fit_values,
    score_bbh,
    score_gsm8k,
)
from eval.perplexity import document_loglikelihoods
from eval.rundir import RunDir, TrainExample, adapter_hash
from eval.stats import Estimate, bootstrap, combine_mean
from eval.suite import Suite, fingerprint
from teacher.core.tasks import Example, get_task
from teacher.core.templates import Template, get_template

log = logging.getLogger(__name__)

SCHEMA = "distill.eval/v1"
RESULTS = "results.json"
ITEMS = "items.jsonl"
_CHUNK = 64  # prompts per generate_batch call: progress granularity; the engine batches


@dataclass
class Subject:
    """One model to evaluate: the base, the run's final adapter, or a checkpoint."""

    label: str  # "model", "base" or "checkpoint-<step>"
    adapter_dir: Path | None
    adapter_hash: str | None
    step: int | None = None


# ----------------------------------------------------------------------------- data


@dataclass
class EvalData:
    """Everything the metrics read, loaded once (before any model is started)."""

    gsm8k: list[Example]
    bbh: list[tuple[str, Example]]
    wikitext: list[Example]
    reference: list[Example]
    mem_train: list[TrainExample]
    mem_control: list[TrainExample]
    train_ppl: list[TrainExample]


def load_data(suite: Suite, run: RunDir | None, data_dir: Path | None) -> EvalData:
    wanted = set(suite.metrics)
    gsm8k = get_task("gsm8k")
    data = EvalData([], [], [], [], [], [], [])
    if "gsm8k" in wanted:
        data.gsm8k = gsm8k.load(suite.gsm8k.split, data_dir, suite.gsm8k.limit)
    if "reference_ppl" in wanted:
        data.reference = gsm8k.load("test", data_dir, suite.reference_ppl.limit)
    if "bbh" in wanted:
        for sub in bbh_subtasks({"subtasks": suite.bbh.subtasks}):
            data.bbh += [(sub, ex) for ex in get_task(f"bbh/{sub}").load("test", data_dir,
                                                                         suite.bbh.limit)]
    if "wikitext" in wanted:
        data.wikitext = get_task("wikitext-2").load(suite.wikitext.split, data_dir,
                                                    suite.wikitext.limit)
    if run is not None and "memorization" in wanted:
        n = suite.memorization.n
        data.mem_train = run.examples("train")[:n]
        data.mem_control = run.examples("val")[:n]
    if run is not None and "train_ppl" in wanted:
        limit = suite.train_ppl.limit
        data.train_ppl = run.examples("train")[:limit]
    return data


def _data_fingerprint(metric: str, data: EvalData, data_dir: Path | None) -> Any:
    def ex_ids(xs: Sequence[Example]) -> str:
        return fingerprint([(x.id, x.question, x.answer) for x in xs])

    def tr_ids(xs: Sequence[TrainExample]) -> str:
        return fingerprint([(x.id, x.prompt, x.response) for x in xs])

    return {
        "gsm8k": lambda: ex_ids(data.gsm8k),
        "bbh": lambda: ex_ids([ex for _, ex in data.bbh]),
        "wikitext": lambda: ex_ids(data.wikitext),
        "reference_ppl": lambda: ex_ids(data.reference),
        "memorization": lambda: [tr_ids(data.mem_train), tr_ids(data.mem_control)],
        "train_ppl": lambda: tr_ids(data.train_ppl),
    }[metric]()


# ----------------------------------------------------------------------------- model work


async def _generate(service: Any, prompts: Sequence[Any], max_new_tokens: int,
                    stop: Sequence[str], progress: Any = None) -> list[str]:
    """Greedy outputs, in order. Prompts whose length leaves less room than
    ``max_new_tokens`` get what the context allows (they are grouped by that budget,
    so the rest still go to the engine together)."""
    from teacher.serving.sampling import SamplingParams

    context = service.hosts[MODEL_NAME].info.context_length
    budgets = []
    for p in prompts:
        n = len(service.tokenize(MODEL_NAME, p))
        budgets.append(max(0, min(max_new_tokens, context - n)))
    outputs = [""] * len(prompts)
    for budget in sorted(set(budgets)):
        if budget == 0:
            continue  # the prompt fills the context: scored as a wrong, empty answer
        idx = [i for i, b in enumerate(budgets) if b == budget]
        params = SamplingParams(temperature=0.0, seed=0, max_new_tokens=budget, stop=tuple(stop))
        for start in range(0, len(idx), _CHUNK):
            part = idx[start : start + _CHUNK]
            results, _, _ = await service.generate_batch(MODEL_NAME, [prompts[i] for i in part],
                                                         params)
            for i, samples in zip(part, results, strict=True):
                outputs[i] = samples[0].text
            if progress is not None:
                progress.update(len(part))
    return outputs


async def _score(service: Any, pairs: Sequence[tuple[Any, str]]) -> list[tuple[float, int]]:
    """(summed NLL, tokens) of each completion after its prompt."""
    from teacher.serving.service import ScoreItem

    out: list[tuple[float, int]] = []
    for start in range(0, len(pairs), _CHUNK):
        chunk = [ScoreItem(p, c) for p, c in pairs[start : start + _CHUNK]]
        results, _ = await service.score(MODEL_NAME, chunk)
        out += [(r.nll_sum, r.num_tokens) for r in results]
    return out


def _template(key: str) -> Template:
    return get_template(key)


async def compute_metric(metric: str, service: Any, suite: Suite, data: EvalData,
                         data_dir: Path | None, progress: Any = None) -> list[dict[str, Any]]:
    """Per-item rows of one metric for the model hosted by ``service``."""
    if metric == "gsm8k":
        task, tpl = get_task("gsm8k"), _template(suite.gsm8k.template)
        prompts = [task.prompt(ex, tpl, data_dir=data_dir) for ex in data.gsm8k]
        max_new = min(suite.gsm8k.max_new_tokens, tpl.max_new_tokens or 1 << 30)
        outputs = await _generate(service, prompts, max_new, tpl.stop, progress)
        return [{"id": ex.id, "output": out, **score_gsm8k(out, ex, tpl)}
                for ex, out in zip(data.gsm8k, outputs, strict=True)]
    if metric == "bbh":
        rows: list[dict[str, Any]] = []
        tpl = get_task("bbh/" + BBH_ANY).default_template
        assert tpl is not None
        prompts = [get_task(f"bbh/{sub}").prompt(ex, data_dir=data_dir) for sub, ex in data.bbh]
        max_new = min(suite.bbh.max_new_tokens, tpl.max_new_tokens or 1 << 30)
        outputs = await _generate(service, prompts, max_new, tpl.stop, progress)
        for (sub, ex), out in zip(data.bbh, outputs, strict=True):
            rows.append({"id": ex.id, "subtask": sub, "output": out, **score_bbh(out, ex)})
        return rows
    if metric == "wikitext":
        from teacher.core.tasks import wikitext_units

        engine = service.hosts[MODEL_NAME].engine
        lls = await document_loglikelihoods(engine, [ex.answer for ex in data.wikitext],
                                            suite.wikitext.max_length)
        rows = []
        for ex, (ll, tokens) in zip(data.wikitext, lls, strict=True):
            words, num_bytes = wikitext_units(ex.raw)
            rows.append({"id": ex.id, "loglikelihood": ll, "tokens": tokens,
                         "words": words, "bytes": num_bytes})
            if progress is not None:
                progress.update(1)
        return rows
    if metric == "reference_ppl":
        task, tpl = get_task("gsm8k"), _template(suite.reference_ppl.template)
        pairs = [(task.prompt(ex, tpl, data_dir=data_dir), task.reference_response(ex))
                 for ex in data.reference]
        scores = await _score(service, pairs)
        return [{"id": ex.id, "loglikelihood": -nll, "tokens": n}
                for ex, (nll, n) in zip(data.reference, scores, strict=True)]
    if metric == "train_ppl":
        scores = await _score(service, [(ex.prompt, ex.response) for ex in data.train_ppl])
        return [{"id": ex.id, "loglikelihood": -nll, "tokens": n}
                for ex, (nll, n) in zip(data.train_ppl, scores, strict=True)]
    if metric == "memorization":
        return await _memorization(service, suite, data, progress)
    raise ValueError(f"metric {metric!r} is not computed on a model")


BBH_ANY = "boolean_expressions"  # any subtask: they share the 3-shot template


async def _memorization(service: Any, suite: Suite, data: EvalData,
                        progress: Any = None) -> list[dict[str, Any]]:
    cfg = suite.memorization
    tokenizer = service.hosts[MODEL_NAME].engine.tokenizer
    pools = [("train", ex) for ex in data.mem_train] + [("control", ex) for ex in data.mem_control]
    rows: list[dict[str, Any]] = []
    for setting in cfg.settings:
        prompts: list[Any] = []
        targets: list[str] = []
        longest = 0
        for _, ex in pools:
            ids = tokenizer.encode_completion(ex.response)
            if setting == "question":
                prompts.append(ex.prompt)
                targets.append(ex.response)
                longest = max(longest, len(ids))
            else:
                head, tail = split_response(ids, tokenizer.decode)
                chat = tokenizer.hf.apply_chat_template(ex.prompt, tokenize=False,
                                                        add_generation_prompt=True)
                prompts.append(chat + head)
                targets.append(tail)
                longest = max(longest, len(ids) - len(ids) // 2)
        max_new = max(1, min(cfg.max_new_tokens, longest + 16))
        outputs = await _generate(service, prompts, max_new, (), progress)
        for (split, ex), out, target in zip(pools, outputs, targets, strict=True):
            rows.append({"id": ex.id, "setting": setting, "split": split, "output": out,
                         **score_copy(out, target, cfg.rouge_threshold)})
    return rows


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


def _paired_estimate(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]],
                     f: Callable[[float, float], float], agg: Callable, suite: Suite) -> Estimate:
    """``f(agg(a), agg(b))`` with a paired bootstrap interval over shared items."""
    a2, b2 = _paired(a, b)
    pairs = list(zip(a2, b2, strict=True))
    return _estimate(pairs, lambda ps: f(agg([p[0] for p in ps]), agg([p[1] for p in ps])), suite)


def _measure_entry(measure: Measure, group: str, items: dict[str, list[dict[str, Any]]],
                   suite: Suite) -> dict[str, Any] | None:
    agg = measure.aggregate_fn()
    model_items = measure.select(items["model"])
    if not model_items:
        return None
    entry: dict[str, Any] = {"group": group, "higher_is_better": measure.higher_is_better,
                             **_estimate(model_items, agg, suite).to_dict()}
    if measure.description:
        entry["description"] = measure.description
    base_items = measure.select(items.get("base", []))
    if base_items and items.get("base") is not items["model"]:
        entry["base"] = _estimate(base_items, agg, suite).to_dict()
        entry["delta"] = _paired_estimate(model_items, base_items, lambda x, y: x - y, agg,
                                          suite).to_dict()
    return entry


def _summary(results: dict[str, Any], items: dict[str, dict[str, list]], suite: Suite,
             has_base: bool) -> dict[str, Any]:
    """Target gain, forgetting (per task and overall), memorization increase."""
    metrics = results["metrics"]
    out: dict[str, Any] = {}
    if not has_base:
        return out

    def paired(metric: str, measure: Measure, f: Callable[[float, float], float]) -> Estimate:
        it = items[metric]
        return _paired_estimate(measure.select(it["model"]), measure.select(it["base"]), f,
                                measure.aggregate_fn(), suite)

    if "gsm8k/strict_match" in metrics:
        m = METRICS["gsm8k"].measures(suite.section("gsm8k"))[0]
        out["target_gain"] = {"unit": "accuracy points", **paired(
            "gsm8k", m, lambda x, y: 100 * (x - y)).to_dict()}
    forgetting: dict[str, Any] = {}
    parts: list[Estimate] = []
    if "bbh/exact_match" in metrics:
        m = METRICS["bbh"].measures(suite.section("bbh"))[0]
        est = paired("bbh", m, lambda x, y: 100 * (y - x))
        forgetting["bbh"] = {"unit": "accuracy points lost", **est.to_dict()}
        parts.append(est)
    if "wikitext/bits_per_byte" in metrics:
        m = METRICS["wikitext"].measures(suite.section("wikitext"))[2]
        est = paired("wikitext", m, lambda x, y: 100 * (x - y) / y)
        forgetting["wikitext"] = {"unit": "% more bits per byte", **est.to_dict()}
        parts.append(est)
    if parts:
        forgetting["overall"] = {"unit": "mean of the tasks' forgetting",
                                 **combine_mean(parts).to_dict()}
        out["forgetting"] = forgetting
    if "memorization" in items:
        inc: dict[str, Any] = {}
        for m in METRICS["memorization"].measures(suite.section("memorization")):
            _, setting, split, name = m.name.split("/")
            if split != "train" or name not in ("exact_match", "rouge_l_above"):
                continue
            scale = 100.0
            inc.setdefault(setting, {})[name] = {
                "unit": "points", **paired("memorization", m,
                                           lambda x, y, s=scale: s * (x - y)).to_dict()}
        out["memorization_increase"] = inc
    return out


# ----------------------------------------------------------------------------- the run


def fit_context(suite: Suite) -> Suite:
    """Make the served context hold a wikitext window plus its one context token."""
    if "wikitext" in suite.metrics:
        suite.engine.max_model_len = max(suite.engine.max_model_len, suite.wikitext.max_length + 1)
    return suite


def model_identity(base_path: Path, suite: Suite) -> dict[str, Any]:
    from teacher.core.models import revision_of

    return {"path": str(base_path), "revision": revision_of(base_path),
            "engine": suite.engine.name, "dtype": suite.engine.dtype}


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

    subjects = [Subject("base", None, None)]
    if run is not None:
        final = run.adapter_dir()
        subjects.insert(0, Subject("model", final, adapter_hash(final)))
        if "reference_ppl" in suite.metrics and suite.reference_ppl.checkpoints:
            for step, name in run.checkpoints():
                d = run.adapter_dir(name)
                subjects.append(Subject(f"checkpoint-{step}", d, adapter_hash(d), step))
    data = load_data(suite, run, data_dir)
    if base_only:
        subjects = [s for s in subjects if s.label == "base"]

    # Which metric each subject needs, from the cache where possible.
    skipped: dict[str, str] = {}
    plan: dict[str, list[str]] = {s.label: [] for s in subjects}
    for name in suite.metrics:
        mdef = METRICS[name]
        if mdef.needs_run_dir and run is None:
            skipped[name] = "needs a run directory (--adapter RUN_DIR)"
            continue
        if not mdef.needs_model:
            continue
        for s in subjects:
            if s.step is not None and name not in ("gsm8k", "reference_ppl"):
                continue
            if mdef.base_only and s.label != "base":
                continue
            plan[s.label].append(name)

    items: dict[str, dict[str, list[dict[str, Any]]]] = {}
    keys: dict[tuple[str, str], dict[str, Any]] = {}
    todo: dict[str, list[str]] = {}
    for s in subjects:
        for name in plan[s.label]:
            subset = fingerprint({"settings": suite.section(name),
                                  "data": _data_fingerprint(name, data, data_dir)})
            key = cache.key(identity, s.adapter_hash, name, subset)
            keys[(s.label, name)] = key
            cached = cache.get(key)
            if cached is not None:
                items.setdefault(name, {})[s.label] = cached
            else:
                todo.setdefault(s.label, []).append(name)

    timings: dict[str, float] = {}
    for s in subjects:
        names = todo.get(s.label)
        if not names:
            continue
        log.info("evaluating %s: %s", s.label, ", ".join(names))
        hosting = (contextlib.nullcontext(base_service)
                   if s.label == "base" and base_service is not None
                   else serve(base_path, s.adapter_dir, suite.engine))
        async with hosting as service:
            for name in names:
                t0 = time.perf_counter()
                bar = _progress(f"{s.label} {name}", _count(name, data, suite), progress)
                try:
                    rows = await compute_metric(name, service, suite, data, data_dir, bar)
                finally:
                    if bar is not None:
                        bar.close()
                timings[f"{s.label}/{name}"] = round(time.perf_counter() - t0, 3)
                cache.put(keys[(s.label, name)], rows)
                items.setdefault(name, {})[s.label] = rows

    if base_only:
        return {"cache": {"hits": cache.hits, "misses": cache.misses}}
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
        mdef = METRICS[name]
        if name in skipped:
            continue
        if name == "fit":
            assert run is not None
            results["fit"] = fit_values(run.loss_history())
            for k, v in results["fit"].items():
                if v is not None:
                    results["metrics"][f"fit/{k}"] = {
                        "group": "fit", "higher_is_better": False, "value": v,
                        "ci": [None, None], "n": 1}
            continue
        per = items.get(name, {})
        view = dict(per)
        if mdef.base_only or not has_base:  # reported as the value under the base model
            view = {"model": per["base"]}
        for measure in mdef.measures(suite.section(name)):
            entry = _measure_entry(measure, mdef.group, view, suite)
            if entry is not None:
                results["metrics"][measure.name] = entry
        items[name] = view if not has_base or mdef.base_only else per
    results["summary"] = _summary(results, items, suite, has_base)
    results["checkpoints"] = _checkpoint_table(subjects, items, suite)
    results["cache"] = {"hits": cache.hits, "misses": cache.misses, "dir": str(cache.root)}
    results["timing"] = {"total_s": round(time.perf_counter() - started, 3), **timings}
    write_results(out, results, items)
    return results


def _checkpoint_table(subjects: Sequence[Subject], items: dict[str, dict[str, list]],
                      suite: Suite) -> list[dict[str, Any]]:
    rows = []
    for s in subjects:
        if s.step is None:
            continue
        row: dict[str, Any] = {"step": s.step, "checkpoint": s.label}
        for name in ("gsm8k", "reference_ppl"):
            rows_ = items.get(name, {}).get(s.label)
            if not rows_:
                continue
            m = METRICS[name].measures(suite.section(name))[0]
            row[m.name] = _estimate(rows_, m.aggregate_fn(), suite).to_dict()
        rows.append(row)
    return rows


def _count(name: str, data: EvalData, suite: Suite) -> int:
    if name == "gsm8k":
        return len(data.gsm8k)
    if name == "bbh":
        return len(data.bbh)
    if name == "wikitext":
        return len(data.wikitext)
    if name == "memorization":
        return (len(data.mem_train) + len(data.mem_control)) * len(suite.memorization.settings)
    return 0


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
