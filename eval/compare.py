"""``distill-eval compare``: base vs ground-truth-trained vs each distilled arm.

Reads the recorded ``results.json`` of each arm (and, through it, the arm's run
directory: manifest and loss history) and writes ``report.md``, ``report.json``
and PNG plots. Nothing is re-evaluated here.

* One row per arm: gsm8k accuracy and target gain, forgetting per task and
  overall, memorization increase, perplexity of its training data under the base
  model, train/val gap, training tokens and time; 95% intervals; best in bold.
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
from pathlib import Path
from typing import Any

from eval.report import (
    fmt,
    fmt_est,
    loss_plot,
    markdown_table,
    memorization_plot,
    pareto_plot,
    saturation_plot,
)
from eval.runner import RESULTS, SCHEMA
from teacher.core.rundir import RunDir, RunDirError

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
    if adapter:
        try:
            run = RunDir(adapter["run_dir"])
            manifest = run.manifest
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
    arm["accuracy"] = metrics.get("gsm8k/strict_match")
    arm["target_gain"] = summary.get("target_gain")
    forgetting = summary.get("forgetting") or {}
    arm["forgetting"] = {k: v for k, v in forgetting.items() if k != "overall"}
    arm["forgetting_overall"] = forgetting.get("overall")
    arm["memorization"] = summary.get("memorization_increase") or {}
    arm["train_ppl"] = metrics.get("train_ppl")
    arm["fit_gap"] = metrics.get("fit/gap")
    arm["checkpoints"] = results.get("checkpoints") or []
    arm["train_tokens"] = manifest.get("train_tokens")
    arm["wall_time_s"] = manifest.get("wall_time_s")
    arm["num_train_examples"] = manifest.get("num_train_examples")
    arm["settings"] = _compute_settings(manifest) if manifest else {}
    arm["source"] = json.dumps({k: (manifest.get("data") or {}).get(k)
                                for k in ("kind", "mode", "task", "path")}, sort_keys=True)
    return arm


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
        group = sorted(group, key=lambda a: a["num_train_examples"])
        points = []
        for i, a in enumerate(group):
            point = {"arm": a["name"], "examples": a["num_train_examples"],
                     "gain": a["target_gain"], "saturated": False}
            if i:
                prev = group[i - 1]
                ratio = a["num_train_examples"] / prev["num_train_examples"]
                delta = a["target_gain"]["value"] - prev["target_gain"]["value"]
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


def _best(arms: Sequence[dict[str, Any]], get: Any, higher: bool) -> int | None:
    vals = [(i, get(a)) for i, a in enumerate(arms) if not a["is_base"]]
    vals = [(i, v["value"]) for i, v in vals if v and v.get("value") is not None
            and math.isfinite(v["value"])]
    if len(vals) < 2:
        return None
    return (max if higher else min)(vals, key=lambda iv: iv[1])[0]


def _table(arms: Sequence[dict[str, Any]]) -> str:
    tasks = sorted({t for a in arms for t in a["forgetting"]})
    settings = sorted({s for a in arms for s in a["memorization"]})
    columns: list[tuple[str, Any, bool | None, int]] = [
        ("gsm8k acc", lambda a: a["accuracy"], None, 3),
        ("target gain (pts)", lambda a: a["target_gain"], True, 1),
        *[(f"forgetting {t}", lambda a, t=t: a["forgetting"].get(t), False, 2) for t in tasks],
        ("forgetting overall", lambda a: a["forgetting_overall"], False, 2),
        *[(f"memorization ↑ {s} (pts)",
           lambda a, s=s: (a["memorization"].get(s) or {}).get("rouge_l_above"), False, 1)
          for s in settings],
        ("train-data ppl (base)", lambda a: a["train_ppl"], None, 2),
        ("val − train loss", lambda a: a["fit_gap"], False, 3),
    ]
    best = {c[0]: _best(arms, c[1], c[2]) if c[2] is not None else None for c in columns}
    header = ["arm", "data", *[c[0] for c in columns], "train tokens", "time (s)"]
    rows = []
    for i, a in enumerate(arms):
        cells = [a["name"], a["data"]]
        for name, get, _, digits in columns:
            cells.append(fmt_est(get(a), digits, bold=best[name] == i))
        cells += [fmt(a["train_tokens"]) if a["train_tokens"] is not None else "–",
                  fmt(a["wall_time_s"], 1) if a["wall_time_s"] is not None else "–"]
        rows.append(cells)
    return markdown_table(header, rows, ["l", "l"] + ["r"] * (len(header) - 2))


def compare(paths: Sequence[Path], out: Path, suite: str | None = None) -> dict[str, Any]:
    """Build the comparison report of the arms whose results are at ``paths``."""
    if not paths:
        raise CompareError("nothing to compare: pass at least one results.json or run dir")
    loaded = [(p, _load(p)) for p in (find_results(Path(x), suite) for x in paths)]
    arms = [_arm(p, r) for p, r in loaded]
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
        base_acc = (first["metrics"].get("gsm8k/strict_match") or {}).get("base")
        arms.insert(0, {**{k: None for k in arms[0]}, "name": f"base ({first['model']['name']})",
                        "data": "—", "is_base": True, "accuracy": base_acc, "forgetting": {},
                        "memorization": {}, "settings": {}, "checkpoints": [],
                        "source": ""})
    flags = _fairness(arms)
    curves = _saturation(arms)
    spread = _seed_spread(arms)

    out.mkdir(parents=True, exist_ok=True)
    trained = [a for a in arms if not a["is_base"]]
    plots = [pareto_plot(trained, out / "pareto.png"),
             memorization_plot(trained, out / "memorization.png")]
    if any(a.get("loss_history") for a in trained):
        plots.append(loss_plot([a for a in trained if a.get("loss_history")],
                               out / "loss_curves.png"))
    if curves:
        plots.append(saturation_plot(curves, out / "saturation.png"))

    md = ["# Distillation comparison", "",
          "Each number is `value [95% bootstrap interval]`; changes are from the base model "
          "on the same items (paired). **Bold**: the best arm in the column.", "",
          _table(arms), "",
          "- *target gain*: gsm8k strict-match accuracy minus the base model's, in points.",
          "- *forgetting*: bbh = accuracy points lost; wikitext = % more bits per byte; "
          "overall = their mean. Lower is better; negative means improved.",
          "- *memorization ↑*: increase over the base model in the share of trained responses "
          "reproduced with ROUGE-L ≥ the threshold.",
          "- *train-data ppl (base)*: perplexity of the arm's training responses under the "
          "base model (distilled data is usually less surprising than human data).", ""]
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
    if curves:
        md += ["## Saturation", "",
               f"Rule: {SATURATION_DATA_RATIO - 1:.0%} more data for under "
               f"{SATURATION_MIN_GAIN:g} points of gain means saturated.", ""]
        for source, points in curves.items():
            md.append(f"- {source}: " + "; ".join(
                f"{p['examples']} ex → {fmt(p['gain']['value'], 1)} pts"
                + (" (saturated)" if p["saturated"] else "") for p in points))
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
                  fmt_est(c.get("gsm8k/strict_match"), 3), fmt_est(c.get("reference_ppl/gsm8k"), 3)]
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
              "fairness_flags": flags, "saturation": curves, "seed_spread": spread,
              "notes": notes,
              "plots": [p.name for p in plots]}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    return {**report, "markdown": markdown}
