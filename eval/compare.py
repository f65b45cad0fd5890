"""``distill-eval compare``: base vs ground-truth-trained vs each distilled arm.

Reads the recorded ``results.json`` of each arm (and, through it, the arm's run
directory: manifest and loss history) and writes ``report.md``, ``report.json``
and PNG plots. Nothing is re-evaluated here.

* One row per arm: gsm8k accuracy and target gain, forgetting per axis (each in
  its own unit, never averaged; KL(base ‖ tuned) on WikiText-2 first where
  kl_forgetting ran: the Pareto plot's axis), memorization increase, perplexity of
  its training data under the base model, train/val gap, training tokens and time;
  95% intervals; best in bold only where paired differences support it.
* Paired differences: every trained arm vs the base and vs the ground-truth arm,
  per item and per seed (hierarchical bootstrap, seeds then items), on every
  headline measure, with the detectable effect and a generated "what it says" line.
* Fair-comparison flags: arms whose training settings differ in more than their
  data (steps, epochs, learning rate, LoRA rank, subset size...) are listed with
  the settings that differ, since a fair comparison matches compute.
* Saturation: where arms of one data source differ only in data size, gain vs
  examples, with the seed-001 rule: +50% data for under 3 points (absolute) of
  gain means saturated.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.metrics import Measure, Metric, registered_metrics
from eval.metrics.base import FORGETTING, MEMORIZATION_INCREASE, TARGET_GAIN
from eval.metrics.gsm8k import Gsm8k
from eval.metrics.kl_forgetting import summary_task
from eval.report import (
    fmt,
    fmt_est,
    loss_plot,
    markdown_table,
    memorization_plot,
    pareto_plot,
    saturation_plot,
)
from eval.runner import ITEMS, RESULTS, SCHEMA
from eval.signs import TRAIN_PPL_MAX, responses_differ, warning_signs
from eval.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    NEWCOMBE,
    Difference,
    describe,
    mean_difference,
    number,
    paired_difference,
    paired_proportions,
    proportion,
    sample_size,
    strata_difference,
    verdict,
)
from teacher.core.config import ConfigError, from_dict
from teacher.core.rundir import RunDir, RunDirError

# The accuracy column (and the checkpoints'): the gsm8k metric's headline measure;
# beside it the format measure and the share of answers cut off at max_new_tokens.
GSM8K_HEADLINE = Gsm8k().headline().name
GSM8K_STRICT, GSM8K_TRUNCATED = "gsm8k/strict_match", "gsm8k/truncated"

SATURATION_DATA_RATIO = 1.5  # "adding 50% more data"
SATURATION_MIN_GAIN = 3.0  # "... for under 3 points absolute"
# Config keys that describe the data, not the compute: arms may differ in these.
_DATA_KEYS = {"data", "dataset", "train_data", "teacher_dir", "data_dir", "out", "output_dir",
              "run_name", "logging_dir", "seed", "data_seed", "path"}


class CompareError(ValueError):
    """Results that cannot be compared (missing, malformed, or from different setups)."""


def find_results(path: Path, suite: str | None = None) -> Path:
    """A results.json: the file itself, one in the folder, or a run dir's eval/<suite>/."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / RESULTS).is_file():
        return path / RESULTS
    if path.is_dir() and (path / "eval").is_dir():
        found = sorted((path / "eval").glob(f"{suite or '*'}/{RESULTS}"))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.parent.name for p in found)
            raise CompareError(f"{path}: results of several suites ({names}); pass --suite")
    if not path.exists():
        raise CompareError(f"{path} does not exist")
    raise CompareError(
        f"no {RESULTS} in {path}: run `distill-eval run --model BASE --adapter RUN_DIR "
        f"--suite SUITE` first"
    )


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CompareError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise CompareError(f"{path}: not a distill-eval results file (schema {SCHEMA})")
    return data


# ----------------------------------------------------------------------------- items
#
# Per-item scores stay apart from the aggregates: results.json holds the numbers the
# runner reported, items.jsonl (beside it) the rows they came from. An arm is one or
# more runs (seeds); every paired difference below is computed from the rows, per
# seed, and pooled over seeds by a hierarchical bootstrap.

Rows = dict[str, dict[str, list[dict[str, Any]]]]  # metric -> subject -> rows


def load_items(results_path: Path, results: Mapping[str, Any]) -> Rows:
    """The per-item rows recorded beside ``results_path`` (empty when there are none)."""
    path = results_path.parent / (results.get("items_file") or ITEMS)
    rows: Rows = {}
    if not path.is_file():
        return rows
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                metric, subject = row.pop("metric"), row.pop("subject")
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise CompareError(f"{path}:{lineno}: not an items row ({e})") from None
            rows.setdefault(metric, {}).setdefault(subject, []).append(row)
    return rows


def _metrics_of(results: Mapping[str, Any]) -> list[Metric]:
    """The results' metrics with the settings they ran with (defaults where the
    recorded section no longer fits today's settings type)."""
    config = (results.get("suite") or {}).get("config") or {}
    out = []
    for cls in registered_metrics():
        if cls.name not in (config.get("metrics") or []):
            continue
        settings = None
        if cls.settings_type is not None:
            try:
                settings = from_dict(cls.settings_type, config.get(cls.name) or {}, cls.name)
            except ConfigError:
                settings = None
        out.append(cls(settings))
    return out


def _key(row: Mapping[str, Any]) -> tuple:
    return (row.get("id"), row.get("setting"), row.get("split"))


def _pair(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> tuple[list, list]:
    """The items both have, matched by id (and setting, split), in a's order."""
    by = {_key(r): r for r in b}
    keep = [r for r in a if _key(r) in by]
    return keep, [by[_key(r)] for r in keep]


def _binary(rows: Sequence[Mapping[str, Any]], field: str) -> bool:
    return all(r.get(field) in (0, 1, 0.0, 1.0, True, False) for r in rows)


@dataclass(frozen=True)
class Headline:
    """A measure every arm is compared on: a metric's measure, or (memorization) a
    difference-in-differences of a trained-items measure and its held-out control."""

    key: str  # the comparison id
    column: str  # the main table's column it decides the bold of
    label: str
    group: str  # the metric group: target, forgetting, memorization
    higher_is_better: bool
    measure: Measure
    metric: str
    control: Measure | None = None  # DiD: the same measure on held-out controls
    unit: str = "points"  # the summary term's unit: points (proportions x100) or nats

    @property
    def scale(self) -> float:
        return 100.0 if self.unit == "points" else 1.0

    def phrases(self) -> tuple[str, str]:
        return _PHRASES.get(self.group, ("", ""))


# The memorization measure of the main table: ROUGE-L above the threshold for the
# generated settings, the log-probability for "loss".
TABLE_MEMORIZATION = ("rouge_l_above", "logprob")
_PHRASES = {"target": ("scores higher than", "scores lower than"),
            "forgetting": ("forgets less than", "forgets more than"),
            "memorization": ("memorizes less than", "memorizes more than")}


def headlines(metrics: Sequence[Metric]) -> list[Headline]:
    """The measures of the metrics' summary lines: target, each forgetting axis,
    memorization (as a difference-in-differences over held-out controls); then the
    measures the metrics also compare (:meth:`Metric.compared`)."""
    out = []
    for metric in metrics:
        measures = {m.name: m for m in metric.measures()}
        for term in metric.summary():
            m = term.measure
            if term.path[0] == MEMORIZATION_INCREASE:
                control = measures.get(m.name.replace("/train/", "/control/"))
                label = f"memorization DiD {'/'.join(term.path[1:])}"
                column = f"{MEMORIZATION_INCREASE}:{term.path[1]}" if term.path[-1] in (
                    TABLE_MEMORIZATION) else ""
                out.append(Headline(f"memorization/{'/'.join(term.path[1:])}", column, label,
                                    metric.group, m.higher_is_better, m, metric.name, control,
                                    term.unit))
            else:
                column = ":".join(term.path)
                out.append(Headline(m.name, column, m.name, metric.group, m.higher_is_better,
                                    m, metric.name))
        for m in metric.compared():  # no column of the main table
            out.append(Headline(m.name, "", m.name, metric.group, m.higher_is_better, m,
                                metric.name))
    return out


def _did(group: Mapping[str, Sequence[Any]], field: str, prefix: str = "") -> float:
    """(tuned - base) on trained items minus the same on held-out controls."""
    def mean_change(pairs: Sequence[Any]) -> float:
        return math.fsum(float(m[field]) - float(b[field]) for m, b in pairs) / len(pairs)

    return mean_change(group[prefix + "train"]) - mean_change(group[prefix + "control"])


class _Comparer:
    """Paired differences between runs, from their items (one list of runs = one arm's
    seeds). Every difference is in the measure's own units; proportions x100 (points)."""

    def __init__(self, runs: Sequence[dict[str, Any]], items: Sequence[Rows], confidence: float,
                 resamples: int, seed: int, vs_base: frozenset[str] = frozenset()):
        self.index = {id(r): i for i, r in enumerate(runs)}
        self.items = items
        self.confidence, self.resamples, self.seed = confidence, resamples, seed
        # Metrics whose rows are already paired with the base (Metric.vs_base: e.g.
        # KL(base ‖ tuned) per chunk): no base rows; arm vs base is their mean.
        self.vs_base = vs_base

    def rows(self, run: dict[str, Any], h: Headline, measure: Measure,
             subject: str = "model") -> list[dict[str, Any]]:
        per = self.items[self.index[id(run)]].get(h.metric) or {}
        return measure.select(per.get(subject) or [])

    def _seeds(self, a: Sequence[dict[str, Any]],
               b: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Runs of A and B paired by training seed (by order where seeds do not match)."""
        by = {r.get("seed"): r for r in b}
        pairs = [(r, by[r.get("seed")]) for r in a if r.get("seed") in by]
        return pairs or list(zip(a, b, strict=False))

    def _did_groups(self, pairs: Sequence[tuple[dict[str, Any], dict[str, Any] | None]],
                    h: Headline) -> list[dict[str, list]]:
        if h.control is None:
            return []
        groups = []
        for ra, rb in pairs:
            g: dict[str, list] = {}
            for prefix, run in (("", ra), ("ref_", rb)):
                if run is None:
                    continue
                for split, m in (("train", h.measure), ("control", h.control)):
                    g[prefix + split] = list(zip(*_pair(self.rows(run, h, m),
                                                        self.rows(run, h, m, "base")),
                                                 strict=True))
            if any(not v for v in g.values()):
                return []
            groups.append(g)
        return groups

    def difference(self, a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]] | None,
                   h: Headline) -> Difference | None:
        """A - B on a headline measure (B None: A's own base-model items; None when
        the items are not recorded)."""
        if b is None:
            return self._vs_base(a, h)
        pairs = self._seeds(a, b)
        opts = {"resamples": self.resamples, "confidence": self.confidence, "seed": self.seed}
        if h.control is not None:
            groups = self._did_groups(pairs, h)
            if not groups:
                return None
            return strata_difference(
                groups, lambda g: _did(g, h.measure.field) - _did(g, h.measure.field, "ref_"),
                **opts).scaled(h.scale)
        seeds = [_pair(self.rows(ra, h, h.measure), self.rows(rb, h, h.measure))
                 for ra, rb in pairs]
        return self._measure_difference(seeds, h)

    def _vs_base(self, runs: Sequence[dict[str, Any]], h: Headline) -> Difference | None:
        if h.control is not None:
            groups = self._did_groups([(r, None) for r in runs], h)
            if not groups:
                return None
            return strata_difference(groups, lambda g: _did(g, h.measure.field),
                                     resamples=self.resamples, confidence=self.confidence,
                                     seed=self.seed).scaled(h.scale)
        if h.metric in self.vs_base:
            return self._paired_vs_base(runs, h)
        seeds = [_pair(self.rows(r, h, h.measure), self.rows(r, h, h.measure, "base"))
                 for r in runs]
        return self._measure_difference(seeds, h)

    def _paired_vs_base(self, runs: Sequence[dict[str, Any]], h: Headline) -> Difference | None:
        """The mean of rows that are each one item's tuned-vs-base difference, pooled
        over the runs (seeds) by the hierarchical bootstrap (seeds, then items)."""
        groups = [self.rows(r, h, h.measure) for r in runs]
        if not groups or any(not g for g in groups) or any(
                h.measure.field not in r for g in groups for r in g):
            return None
        crossed = len({tuple(_key(r) for r in g) for g in groups}) == 1
        return mean_difference(groups, h.measure.aggregate_fn(), crossed=crossed,
                               resamples=self.resamples, confidence=self.confidence,
                               seed=self.seed)

    def _measure_difference(self, seeds: Sequence[tuple[list, list]],
                            h: Headline) -> Difference | None:
        opts = {"resamples": self.resamples, "confidence": self.confidence, "seed": self.seed}
        if not seeds or any(not x for x, _ in seeds):
            return None
        if any(h.measure.field not in r for x, y in seeds for r in (*x, *y)):
            return None  # items recorded before the measure existed
        # One test set scored by every seed's model: share the item draws across seeds.
        crossed = len({tuple(_key(r) for r in x) for x, _ in seeds}) == 1
        f = h.measure.field
        # A vs-base metric's rows are per-token rates of a chunk, not 0/1 items, even
        # where every one happens to be 0 (an unchanged model).
        if h.measure.aggregation == "mean" and h.metric not in self.vs_base and all(
                _binary(x, f) and _binary(y, f) for x, y in seeds):
            return paired_proportions(
                [([float(r[f]) for r in x], [float(r[f]) for r in y]) for x, y in seeds],
                crossed=crossed, **opts).scaled(100.0)
        return paired_difference(seeds, h.measure.aggregate_fn(), crossed=crossed, **opts)


def _units(h: Headline, diff: Difference) -> tuple[str, int]:
    """Unit and decimals: points for proportions, else enough to show the MDE."""
    if diff.method == NEWCOMBE or diff.discordant is not None or (
            h.control is not None and h.unit == "points"):
        return "pts", 1
    scale = diff.mde or abs(diff.value) or 1.0
    return "", max(1, min(5, 1 - math.floor(math.log10(scale))))


# ----------------------------------------------------------------------------- arms


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _compute_settings(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Training settings other than the data, plus the subset size."""
    flat = {k: v for k, v in _flatten(manifest.get("config") or {}).items()
            if not (set(k.split(".")) & _DATA_KEYS)}
    if manifest.get("num_train_examples") is not None:
        flat["num_train_examples"] = manifest["num_train_examples"]
    return flat


def _arm(path: Path, results: dict[str, Any]) -> dict[str, Any]:
    adapter = results.get("adapter")
    summary = results.get("summary") or {}
    metrics = results.get("metrics") or {}
    arm: dict[str, Any] = {"results": str(path), "suite": results["suite"]["name"],
                           "model": results["model"]["name"],
                           "model_revision": results["model"].get("revision", "")}
    manifest: dict[str, Any] = {}
    arm["responses_differ"] = None
    if adapter:
        try:
            run = RunDir(adapter["run_dir"])
            manifest = run.manifest
            arm["responses_differ"] = responses_differ(run)
            try:
                arm["loss_history"] = run.loss_history()
            except RunDirError:
                arm["loss_history"] = None
        except RunDirError:
            manifest = {}
        arm["name"] = Path(adapter["run_dir"]).name
        data = adapter.get("data") or manifest.get("data") or {}
        arm["data"] = data.get("kind", "?") + (f"/{data['mode']}" if data.get("mode") else "")
    else:
        arm["name"] = f"base ({results['model']['name']})"
        arm["data"] = "—"
    arm["is_base"] = not adapter
    arm["seed"] = manifest.get("seed")
    arm["arm"] = _SEED_SUFFIX.sub("", arm["name"]) if adapter else arm["name"]
    confidence = float((results["suite"].get("config") or {}).get("confidence")
                       or DEFAULT_CONFIDENCE)
    arm["accuracy"] = _exact(metrics.get(GSM8K_HEADLINE), confidence)
    arm["strict"] = _exact(metrics.get(GSM8K_STRICT), confidence)
    arm["truncated"] = _exact(metrics.get(GSM8K_TRUNCATED), confidence)
    arm["target_gain"] = summary.get(TARGET_GAIN)
    # Each forgetting axis on its own: their units differ (points, % bits per byte),
    # so the runner's "overall" mean of them is not shown.
    forgetting = summary.get(FORGETTING) or {}
    arm["forgetting"] = {k: v for k, v in forgetting.items() if k != "overall"}
    # Replaced by the difference-in-differences over held-out controls when the items
    # are recorded (compare()); this is the trained items' increase alone.
    arm["memorization"] = summary.get(MEMORIZATION_INCREASE) or {}
    arm["memorization_did"] = False
    arm["train_ppl"] = metrics.get("train_ppl")
    arm["reference_ppl"] = metrics.get("reference_ppl/gsm8k")  # over-memorization's sign
    arm["fit_gap"] = metrics.get("fit/gap")
    arm["checkpoints"] = results.get("checkpoints") or []
    arm["train_tokens"] = manifest.get("train_tokens")
    arm["wall_time_s"] = manifest.get("wall_time_s")
    arm["num_train_examples"] = manifest.get("num_train_examples")
    arm["settings"] = _compute_settings(manifest) if manifest else {}
    arm["source"] = json.dumps({k: (manifest.get("data") or {}).get(k)
                                for k in ("kind", "mode", "task", "path")}, sort_keys=True)
    return arm


def _exact(est: Mapping[str, Any] | None, confidence: float) -> dict[str, Any] | None:
    """An accuracy's entry with the exact (Clopper–Pearson) interval of its k/n."""
    if not est or est.get("value") is None or not est.get("n"):
        return dict(est) if est else None
    n = int(est["n"])
    k = est["value"] * n
    if abs(k - round(k)) > 1e-6:
        return dict(est)  # not a proportion of n items
    out = {**est, **proportion(round(k), n, confidence).to_dict(),
           "method": "Clopper-Pearson"}
    if isinstance(est.get("base"), Mapping):
        out["base"] = _exact(est["base"], confidence)
    return out


def _fairness(arms: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Arms whose settings differ from the reference arm (the first trained one)."""
    trained = [a for a in arms if not a["is_base"] and a["settings"]]
    if len(trained) < 2:
        return []
    ref = trained[0]
    flags = []
    for arm in trained[1:]:
        keys = sorted(set(ref["settings"]) | set(arm["settings"]))
        diffs = [{"setting": k, "reference": ref["settings"].get(k), "arm": arm["settings"].get(k)}
                 for k in keys if ref["settings"].get(k) != arm["settings"].get(k)]
        if diffs:
            flags.append({"arm": arm["name"], "reference": ref["name"], "differs": diffs})
    return flags


def _saturation(arms: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per data source whose arms differ only in data size: gain vs examples."""
    curves: dict[str, list[dict[str, Any]]] = {}
    by_source: dict[str, list[dict[str, Any]]] = {}
    for a in arms:
        if not a["is_base"] and a["target_gain"] and a["num_train_examples"]:
            by_source.setdefault(a["source"], []).append(a)
    for group in by_source.values():
        if len({a["num_train_examples"] for a in group}) < 2:
            continue
        others = [{k: v for k, v in a["settings"].items()
                   if k != "num_train_examples" and "limit" not in k.split(".")[-1]}
                  for a in group]
        if any(o != others[0] for o in others):
            continue  # they differ in more than data size
        # One point per size: the seeds' runs of a size averaged (their mean gain).
        sizes: dict[int, list[dict[str, Any]]] = {}
        for a in group:
            sizes.setdefault(a["num_train_examples"], []).append(a)
        points: list[dict[str, Any]] = []
        for size in sorted(sizes):
            runs = sizes[size]
            gain = runs[0]["target_gain"] if len(runs) == 1 else {
                "unit": runs[0]["target_gain"].get("unit"), "seeds": len(runs),
                "value": math.fsum(r["target_gain"]["value"] for r in runs) / len(runs)}
            point = {"arm": ", ".join(r["name"] for r in runs), "examples": size,
                     "gain": gain, "saturated": False}
            if points:
                prev = points[-1]
                ratio = size / prev["examples"]
                delta = gain["value"] - prev["gain"]["value"]
                point["vs_previous"] = {"data_ratio": ratio, "gain_change": delta}
                point["saturated"] = ratio >= SATURATION_DATA_RATIO and delta < SATURATION_MIN_GAIN
            points.append(point)
        data = json.loads(group[0]["source"])
        label = data.get("kind") or "?"
        if data.get("mode"):
            label += f"/{data['mode']}"
        curves[label] = points
    return curves


_SEED_SUFFIX = re.compile(r"-seed\d+$")


def _seed_spread(arms: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Arms trained under several seeds (run names ``<arm>-seed<k>``): the spread of
    their accuracy and target gain across seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for a in arms:
        if not a["is_base"] and _SEED_SUFFIX.search(a["name"]):
            groups.setdefault(_SEED_SUFFIX.sub("", a["name"]), []).append(a)
    rows = []
    for name, group in groups.items():
        if len(group) < 2:
            continue
        row: dict[str, Any] = {"arm": name, "seeds": len(group)}
        for key in ("accuracy", "target_gain"):
            vals = [a[key]["value"] for a in group
                    if a.get(key) and a[key].get("value") is not None]
            if len(vals) < 2:
                continue
            mean = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
            row[key] = {"mean": mean, "sd": sd, "min": min(vals), "max": max(vals)}
        rows.append(row)
    return rows


def _best(arms: Sequence[dict[str, Any]], get: Any, higher: bool,
          heads: Sequence[Headline], comparer: _Comparer | None) -> int | None:
    """The arm to bold in a column: the best by point estimate, but only where its
    paired difference to every other trained arm excludes zero in its favour."""
    vals = [(i, get(a)) for i, a in enumerate(arms) if not a["is_base"]]
    vals = [(i, v["value"]) for i, v in vals if v and v.get("value") is not None
            and math.isfinite(v["value"])]
    if len(vals) < 2 or comparer is None or not heads:
        return None
    best = (max if higher else min)(vals, key=lambda iv: iv[1])[0]
    h = heads[0]
    for i, _ in vals:
        if i == best:
            continue
        d = comparer.difference([arms[best]], [arms[i]], h)
        if d is None or not d.excludes_zero or ((d.low or 0) > 0) != h.higher_is_better:
            return None
    return best


def _unit(arms: Sequence[dict[str, Any]], task: str) -> str:
    units = {(a["forgetting"].get(task) or {}).get("unit") for a in arms} - {None}
    return f" ({units.pop()})" if len(units) == 1 else ""


def _memorization(arm: Mapping[str, Any], setting: str) -> dict[str, Any] | None:
    """The setting's main-table measure (:data:`TABLE_MEMORIZATION`), with its unit."""
    measures = arm["memorization"].get(setting) or {}
    return next((measures[k] for k in TABLE_MEMORIZATION if k in measures), None)


def _memorization_unit(arms: Sequence[dict[str, Any]], setting: str) -> str:
    units = {(_memorization(a, setting) or {}).get("unit") for a in arms}
    return "nats" if "nats" in units else "pts"


def _table(arms: Sequence[dict[str, Any]], heads: Sequence[Headline],
           comparer: _Comparer | None, axis: str | None = None) -> str:
    tasks = _forgetting_tasks(arms, axis)
    settings = sorted({s for a in arms for s in a["memorization"]})
    did = any(a["memorization_did"] for a in arms)
    mem = "memorization DiD" if did else "memorization ↑ (trained items only)"
    columns: list[tuple[str, str, Any, bool | None, int]] = [
        ("gsm8k acc (%)", "", lambda a: _points(a["accuracy"]), None, 1),
        ("strict (%)", "", lambda a: _points(a.get("strict")), None, 1),
        ("cut off (%)", "", lambda a: _points(a.get("truncated")), None, 1),
        ("target gain (pts)", TARGET_GAIN, lambda a: a["target_gain"], True, 1),
        *[(f"forgetting {t}{_unit(arms, t)}", f"{FORGETTING}:{t}",
           lambda a, t=t: a["forgetting"].get(t), False, 3 if t in KL_AXES else 2)
          for t in tasks],
        *[(f"{mem} {s} ({unit})", f"{MEMORIZATION_INCREASE}:{s}",
           lambda a, s=s: _memorization(a, s), False, 3 if unit == "nats" else 1)
          for s in settings for unit in [_memorization_unit(arms, s)]],
        ("train-data ppl (base)", "", lambda a: a["train_ppl"], None, 2),
        ("val − train loss", "", lambda a: a["fit_gap"], None, 3),
    ]
    best = {c[0]: _best(arms, c[2], c[3], [h for h in heads if h.column == c[1]], comparer)
            if c[3] is not None and c[1] else None for c in columns}
    header = ["arm", "data", *[c[0] for c in columns], "train tokens", "time (s)"]
    rows = []
    for i, a in enumerate(arms):
        cells = [a["name"], a["data"]]
        for name, _, get, _, digits in columns:
            cells.append(fmt_est(get(a), digits, bold=best[name] == i))
        cells += [fmt(a["train_tokens"]) if a["train_tokens"] is not None else "–",
                  fmt(a["wall_time_s"], 1) if a["wall_time_s"] is not None else "–"]
        rows.append(cells)
    return markdown_table(header, rows, ["l", "l"] + ["r"] * (len(header) - 2))


def _points(est: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not est or est.get("value") is None:
        return None
    ci = est.get("ci") or [None, None]
    return {**est, "value": 100 * est["value"],
            "ci": [None if c is None else 100 * c for c in ci]}


# The preferred forgetting axes: KL(base ‖ tuned) per token, continuous and sensitive
# where accuracy points on a few items are not; on WikiText-2 first.
KL_AXES = (summary_task("wikitext"), summary_task("bbh"))


def _forgetting_axis(arms: Sequence[dict[str, Any]]) -> str | None:
    """The one forgetting axis of the Pareto plot (and the main table's first
    forgetting column): KL(base ‖ tuned) where kl_forgetting ran, else a continuous
    one (not accuracy points), else the first. One axis, one unit: never a mean of
    points and percents."""
    tasks = sorted({t for a in arms for t in a["forgetting"]})
    kl = [t for t in KL_AXES if t in tasks]
    continuous = [t for t in tasks if not any(
        "accuracy" in str((a["forgetting"].get(t) or {}).get("unit", "")) for a in arms)]
    return (kl or continuous or tasks or [None])[0]


def _forgetting_tasks(arms: Sequence[dict[str, Any]], axis: str | None) -> list[str]:
    """The forgetting columns: the axis first, then the others by name."""
    tasks = sorted({t for a in arms for t in a["forgetting"]})
    return sorted(tasks, key=lambda t: t != axis)


def _forgetting_note(arms: Sequence[dict[str, Any]], axis: str | None) -> str:
    """The main table's note on its forgetting columns: each one's unit."""
    tasks = _forgetting_tasks(arms, axis)
    units = "; ".join(f"{t}: " + (" or ".join(sorted(
        {str((a["forgetting"].get(t) or {}).get("unit")) for a in arms
         if (a["forgetting"].get(t) or {}).get("unit")})) or "?") for t in tasks)
    note = (f"- *forgetting*: one column per axis, in its own unit ({units}); they are "
            "not averaged. Lower is better; negative means improved.")
    if axis in KL_AXES:
        note += (f" *{axis}* (the Pareto plot's axis): the mean over text chunks of the "
                 "per-token KL divergence of the tuned model's next-token distribution "
                 "from the base model's (0: unchanged).")
    return note


def _reference(groups: Mapping[str, list[dict[str, Any]]]) -> str | None:
    """The ground-truth arm (the human references), else the first trained arm."""
    names = list(groups)
    for name in names:
        if groups[name][0]["data"] == "ground_truth":
            return name
    return names[0] if names else None


def _comparisons(groups: Mapping[str, list[dict[str, Any]]], ref: str | None,
                 heads: Sequence[Headline], comparer: _Comparer) -> list[dict[str, Any]]:
    """Every trained arm vs the base model and vs the reference arm, on every headline
    measure, from the items (pooled over seeds; per seed where there are several)."""
    out = []
    for name, runs in groups.items():
        against: list[tuple[str, list[dict[str, Any]] | None]] = [("base", None)]
        if ref is not None and name != ref:
            against.append((ref, groups[ref]))
        for other, other_runs in against:
            for h in heads:
                d = comparer.difference(runs, other_runs, h)
                if d is None:
                    continue
                row: dict[str, Any] = {"arm": name, "vs": other, "measure": h.key,
                                       "label": h.label, "group": h.group,
                                       "higher_is_better": h.higher_is_better, **d.to_dict()}
                if len(runs) > 1 and other_runs is not None:
                    row["seed_differences"] = [
                        {"seed": ra.get("seed"), **dd.to_dict()}
                        for ra, rb in comparer._seeds(runs, other_runs)
                        if (dd := comparer.difference([ra], [rb], h)) is not None]
                row["_diff"] = d
                row["_head"] = h
                out.append(row)
    return out


def _comparison_section(rows: Sequence[dict[str, Any]], ref: str | None,
                        seeds: int, vs_base: frozenset[str] = frozenset()) -> list[str]:
    md = ["## Paired differences", ""]
    if not rows:
        return [*md, "No per-item scores (items.jsonl) beside the results: no paired "
                "differences between arms.", ""]
    md += [f"Arm minus {ref} (the reference arm) and arm minus the base model, on the same "
           "items, in the measure's units (proportions in points). *detectable*: the "
           "smallest true difference found with 80% power by a two-sided 5% test at this n.",
           ""]
    table, says = [], []
    for r in rows:
        d, h = r["_diff"], r["_head"]
        unit, digits = _units(h, d)
        test = "McNemar p=" + fmt(r["p_value"], 3) if r.get("p_value") is not None else ""
        table.append([r["arm"], r["vs"], h.label + (f" ({unit})" if unit else ""),
                      describe(d, digits), "–" if d.mde is None else f"±{number(d.mde, digits)}",
                      sample_size(d), test or "–"])
        better, worse = h.phrases()
        says.append(verdict(r["arm"], r["vs"], h.label, d, h.higher_is_better, better=better,
                            worse=worse, digits=digits, unit=unit))
        for sd in r.get("seed_differences") or []:
            ci = sd["ci"]
            table.append([f"  seed {sd['seed']}", r["vs"], h.label, describe(Difference(
                sd["value"], ci[0], ci[1], sd["n"], 1, sd["method"]), digits), "", "",
                "McNemar p=" + fmt(sd["p_value"], 3) if sd.get("p_value") is not None else "–"])
    md += [markdown_table(["arm", "minus", "measure", "difference [95% CI]", "detectable",
                           "n", "test"], table, ["l", "l", "l", "r", "r", "r", "l"]), ""]
    md += ["## What it says", "",
           "Generated from the differences above: a claim only where the interval excludes "
           "zero.", "", *[f"- {line}" for line in says], ""]
    methods = sorted({r["method"] for r in rows})
    md += ["Intervals: accuracies are Clopper–Pearson exact intervals; "
           + "; ".join(methods) + ". Continuous measures: percentile bootstrap of the paired "
           "difference; detectable effect (z₀.₉₇₅ + z₀.₈) × its bootstrap standard error. "
           "Proportions of one seed: detectable effect from the discordant rate (Connor "
           "1987). Memorization: (tuned − base) on trained items minus the same on held-out "
           "controls, by reproduction and by loss (the mean log-probability of the trained "
           "response, nats)."]
    if seeds <= 1:
        md += ["", "⚠ One training seed per arm: these intervals cover item variance only, "
               "not run-to-run variance (which can be many times larger); train several "
               "seeds to compare arms."]
    if any(r["_head"].metric in vs_base for r in rows):
        md += ["", "KL(base ‖ tuned), NLL change and top-1 flip rate (kl_forgetting): each "
               "row is already one text chunk's tuned-vs-base change, so arm minus base is "
               "the mean of the rows, and arm minus arm pairs the same chunk under the same "
               "seed; lower is better for all three."]
    return [*md, ""]


def _signs_section(trained: Sequence[dict[str, Any]]) -> list[str]:
    """Per run: how much of its training text is not the reference, and the small-data
    guide's warning signs that fired, each with the number that fired it."""
    md = ["## Training data and warning signs", ""]
    rows = []
    for a in trained:
        d = a.get("responses_differ")
        rows.append([a["name"], a["data"], "–" if not d else str(d["n"]),
                     "–" if not d or d["share"] is None
                     else f"{d['differ']} ({100 * d['share']:.0f}%)"])
    md += ["Training responses that differ from the human references (an arm whose "
           "responses are mostly the references trains on ground truth):", "",
           markdown_table(["run", "data", "train examples", "differ from reference"], rows,
                          ["l", "l", "r", "r"]), ""]
    md += ["Warning signs (the small-data guide's): training-data perplexity under the "
           f"base > {TRAIN_PPL_MAX:g}, a growing train/val gap, oscillating loss, "
           "over-memorization (reference perplexity rising while accuracy holds), a "
           "memorization increase whose interval is above 0.", ""]
    flagged = [(a["name"], s) for a in trained for s in a.get("signs") or []]
    if flagged:
        md += [f"- ⚠ **{name}** {s['sign']}: {s['message']}" for name, s in flagged]
    else:
        md.append("No warning sign fired in any run.")
    return [*md, ""]


def compare(paths: Sequence[Path], out: Path, suite: str | None = None) -> dict[str, Any]:
    """Build the comparison report of the arms whose results are at ``paths``."""
    if not paths:
        raise CompareError("nothing to compare: pass at least one results.json or run dir")
    loaded = [(p, _load(p)) for p in (find_results(Path(x), suite) for x in paths)]
    arms = [_arm(p, r) for p, r in loaded]
    items = [load_items(p, r) for p, r in loaded]
    stats_cfg = loaded[0][1]["suite"].get("config") or {}
    metrics = _metrics_of(loaded[0][1])
    heads = headlines(metrics)
    comparer = _Comparer(arms, items,
                         float(stats_cfg.get("confidence") or DEFAULT_CONFIDENCE),
                         int(stats_cfg.get("bootstrap_resamples") or DEFAULT_RESAMPLES),
                         int(stats_cfg.get("seed") or 0),
                         vs_base=frozenset(m.name for m in metrics if m.vs_base))
    units = {":".join(t.path): t.unit for m in metrics for t in m.summary()}
    by_column = {h.column: h for h in heads if h.column}
    for arm in arms:
        if arm["is_base"]:
            continue
        gain = by_column.get(TARGET_GAIN)
        d = comparer.difference([arm], None, gain) if gain else None
        if d is not None:  # exact paired interval from the items
            arm["target_gain"] = {"unit": "accuracy points", **d.to_dict()}
        for task, est in arm["forgetting"].items():
            h = by_column.get(f"{FORGETTING}:{task}")
            if h is None or "accuracy points" not in str(est.get("unit", "")):
                continue
            d = comparer.difference([arm], None, h)
            if d is not None and d.discordant is not None:  # accuracy: Newcombe, points lost
                arm["forgetting"][task] = {"unit": est["unit"], **d.scaled(-1.0).to_dict()}
        for h in heads:  # a vs-base metric's line (KL): the mean of its rows, from the items
            if h.metric in comparer.vs_base and h.column.startswith(f"{FORGETTING}:"):
                d = comparer.difference([arm], None, h)
                if d is not None:
                    arm["forgetting"][h.column.split(":", 1)[1]] = {
                        "unit": units.get(h.column, ""), **d.to_dict()}
        did = {}
        for h in heads:
            if h.control is None:
                continue
            d = comparer.difference([arm], None, h)
            if d is not None:
                setting, name = h.key.split("/")[1:]
                did.setdefault(setting, {})[name] = {"unit": h.unit, **d.to_dict()}
        if did:
            arm["memorization"], arm["memorization_did"] = did, True
        arm["signs"] = [sign.to_dict() for sign in warning_signs(arm)]
    notes = []
    if len({(a["model"], a["model_revision"]) for a in arms}) > 1:
        notes.append("arms were evaluated on different base models: "
                     + ", ".join(sorted({a["model"] for a in arms})))
    if len({a["suite"] for a in arms}) > 1:
        notes.append("arms were evaluated with different suites: "
                     + ", ".join(sorted({a["suite"] for a in arms})))
    # A base row first: the base model's absolute numbers, from the first arm.
    if not any(a["is_base"] for a in arms):
        first = loaded[0][1]
        confidence = float(stats_cfg.get("confidence") or DEFAULT_CONFIDENCE)

        def base_of(name: str) -> dict[str, Any] | None:
            return _exact((first["metrics"].get(name) or {}).get("base"), confidence)

        arms.insert(0, {**{k: None for k in arms[0]}, "name": f"base ({first['model']['name']})",
                        "data": "—", "is_base": True, "accuracy": base_of(GSM8K_HEADLINE),
                        "strict": base_of(GSM8K_STRICT), "truncated": base_of(GSM8K_TRUNCATED),
                        "forgetting": {},
                        "memorization": {}, "memorization_did": False, "settings": {},
                        "checkpoints": [], "source": ""})
    trained = [a for a in arms if not a["is_base"]]
    axis = _forgetting_axis(trained)
    groups: dict[str, list[dict[str, Any]]] = {}
    for a in trained:
        groups.setdefault(a["arm"], []).append(a)
    ref = _reference(groups)
    comparisons = _comparisons(groups, ref, heads, comparer)
    seeds = max((len(g) for g in groups.values()), default=1)
    flags = _fairness(arms)
    curves = _saturation(arms)
    spread = _seed_spread(arms)

    out.mkdir(parents=True, exist_ok=True)
    plots = [pareto_plot(trained, out / "pareto.png", axis),
             memorization_plot(trained, out / "memorization.png")]
    if any(a.get("loss_history") for a in trained):
        plots.append(loss_plot([a for a in trained if a.get("loss_history")],
                               out / "loss_curves.png"))
    if curves:
        plots.append(saturation_plot(curves, out / "saturation.png"))

    md = ["# Distillation comparison", "",
          "Each number is `value [95% interval]`: accuracies with their exact "
          "(Clopper–Pearson) interval, changes from the base model on the same items "
          "(paired; target gain with Newcombe's interval where the items are recorded). "
          "**Bold**: the best arm in a column, only where its paired difference to every "
          "other arm excludes zero.", "",
          _table(arms, heads, comparer, axis), "",
          "- *gsm8k acc*: flexible-extract accuracy (the last boxed number, else the last "
          "number); *strict*: the answer in the prompt's own format (`\\boxed{N}` for the "
          "suites' prompt); *cut off*: "
          "the share of answers that hit max_new_tokens.",
          "- *target gain*: gsm8k flexible-extract accuracy minus the base model's, in points.",
          _forgetting_note(arms, axis),
          "- *memorization DiD*: (tuned − base) share of responses reproduced with ROUGE-L ≥ "
          "the threshold on trained items, minus the same on held-out controls (points); "
          "*loss*: the same of the responses' mean log-probability per token (nats)."
          if any(a["memorization_did"] for a in arms) else
          "- *memorization ↑*: increase over the base model in the share of trained responses "
          "reproduced with ROUGE-L ≥ the threshold (no items recorded: not corrected by the "
          "held-out controls).",
          "- *train-data ppl (base)*: perplexity of the arm's training responses under the "
          "base model (distilled data is usually less surprising than human data).", ""]
    md += _comparison_section(comparisons, ref, seeds, comparer.vs_base)
    md += ["## Fair comparison", ""]
    if flags:
        md.append("These arms differ from the reference arm in more than their data; "
                  "their differences are not only the data's:")
        md.append("")
        for f in flags:
            diffs = ", ".join(f"{d['setting']} ({d['reference']} vs {d['arm']})"
                              for d in f["differs"])
            md.append(f"- ⚠ **{f['arm']}** vs {f['reference']}: {diffs}")
    else:
        md.append("All trained arms share their training settings (only the data differs).")
    md.append("")
    md += _signs_section(trained)
    if curves:
        md += ["## Saturation", "",
               f"Rule: {SATURATION_DATA_RATIO - 1:.0%} more data for under "
               f"{SATURATION_MIN_GAIN:g} points of gain means saturated.", ""]
        for source, points in curves.items():
            md.append(f"- {source}: " + "; ".join(
                f"{p['examples']} ex → {fmt(p['gain']['value'], 1)} pts"
                + (f" (mean of {p['gain']['seeds']} seeds)" if p["gain"].get("seeds") else "")
                + (f" (saturated) [{p['vs_previous']['data_ratio'] - 1:+.0%} data for "
                   f"{p['vs_previous']['gain_change']:+.1f} pts < {SATURATION_MIN_GAIN:g}]"
                   if p["saturated"] else "") for p in points))
        md.append("")
    if spread:
        def cell(row: dict[str, Any], key: str, digits: int) -> str:
            v = row.get(key)
            if not v:
                return "–"
            return (f"{fmt(v['mean'], digits)} ± {fmt(v['sd'], digits)} "
                    f"({fmt(v['min'], digits)}–{fmt(v['max'], digits)})")

        md += ["## Seeds", "",
               "Arms trained under several seeds: mean ± standard deviation across seeds "
               "(min–max). A difference between arms smaller than this spread is noise.", "",
               markdown_table(["arm", "seeds", "gsm8k acc", "target gain (pts)"],
                              [[r["arm"], str(r["seeds"]), cell(r, "accuracy", 3),
                                cell(r, "target_gain", 1)] for r in spread]), ""]
    ckpt_rows = [[a["name"], str(c["step"]),
                  fmt_est(c.get(GSM8K_HEADLINE), 3), fmt_est(c.get("reference_ppl/gsm8k"), 3)]
                 for a in trained for c in a.get("checkpoints") or []]
    if ckpt_rows:
        md += ["## Over-memorization by checkpoint", "",
               "Perplexity of the gsm8k test references beside accuracy (Ruan et al. 2025): "
               "accuracy holding while reference perplexity climbs is over-memorization.", "",
               markdown_table(["arm", "step", "gsm8k acc", "reference ppl"], ckpt_rows), ""]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    md += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    markdown = "\n".join(md)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    report = {"arms": [{k: v for k, v in a.items() if k != "loss_history"} for a in arms],
              "reference_arm": ref, "pareto_axis": axis,
              "comparisons": [{k: v for k, v in r.items() if not k.startswith("_")}
                              for r in comparisons],
              "fairness_flags": flags, "saturation": curves, "seed_spread": spread,
              "notes": notes,
              "plots": [p.name for p in plots]}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    return {**report, "markdown": markdown}
