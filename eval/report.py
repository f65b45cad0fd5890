"""Rendering: the terminal/Markdown tables and the PNG plots of results and reports.

Tables are GitHub Markdown that also read well in a terminal (aligned columns,
numbers with their 95% interval as ``value [low, high]``). Plots use matplotlib's
Agg backend (no display needed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"


def fmt_est(est: Mapping[str, Any] | None, digits: int = 3, bold: bool = False) -> str:
    """``value [low, high]`` (bold value when asked)."""
    if not est or est.get("value") is None:
        return "–"
    value = fmt(est["value"], digits)
    if bold:
        value = f"**{value}**"
    ci = est.get("ci") or [None, None]
    if ci[0] is None or ci[1] is None:
        return value
    return f"{value} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   align: Sequence[str] | None = None) -> str:
    """A GitHub table with padded columns, so it is aligned in a terminal too."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    align = align or ["l"] + ["r"] * (len(header) - 1)

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).ljust(w) if a == "l" else str(c).rjust(w)
                 for c, w, a in zip(cells, widths, align, strict=True)]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1))
                         for w, a in zip(widths, align, strict=True)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def results_table(results: Mapping[str, Any]) -> str:
    """One row per measure of a ``results.json``: value, base, change (with intervals)."""
    has_base = any("base" in m for m in results["metrics"].values())
    header = ["metric", "n", "value [95% CI]"]
    header += ["base", "change"] if has_base else []
    header.append("better")
    rows = []
    for name, m in results["metrics"].items():
        row = [name, str(m.get("n", "")), fmt_est(m)]
        if has_base:
            row += [fmt_est(m.get("base")), fmt_est(m.get("delta"))]
        row.append("higher" if m["higher_is_better"] else "lower")
        rows.append(row)
    out = [f"## {results['model']['name']}"
           + (f" + {results['adapter']['run_dir']}" if results.get("adapter") else "")
           + f" — suite {results['suite']['name']}", "", markdown_table(header, rows)]
    summary = results.get("summary") or {}
    if summary:
        out += ["", "Summary (change from the base model):", ""]
        if "target_gain" in summary:
            out.append(f"- target gain (gsm8k flexible-extract): "
                       f"{fmt_est(summary['target_gain'], 1)} points")
        for task, est in (summary.get("forgetting") or {}).items():
            out.append(f"- forgetting {task}: {fmt_est(est, 3 if task.startswith('kl_') else 2)}"
                       f" ({est['unit']})")
        for setting, ms in (summary.get("memorization_increase") or {}).items():
            for name, est in ms.items():
                out.append(f"- memorization increase, {setting} {name}: {fmt_est(est, 1)} points")
    if results.get("skipped"):
        out += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in results["skipped"].items())]
    return "\n".join(out)


# ----------------------------------------------------------------------------- plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(est: Mapping[str, Any]) -> tuple[float, float]:
    lo, hi = (est.get("ci") or [None, None])
    v = est["value"]
    return (v - lo if lo is not None else 0.0, hi - v if hi is not None else 0.0)


def pareto_plot(arms: Sequence[Mapping[str, Any]], path: Path, axis: str | None) -> Path:
    """Target gain (y) against one forgetting axis (x; one unit, never a mean of
    several), with 95% intervals; the Pareto front (no arm both gains more and
    forgets less) is drawn as a line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    pts = []
    unit = ""
    for arm in arms:
        gain = arm.get("target_gain")
        forget = (arm.get("forgetting") or {}).get(axis) if axis else None
        unit = unit or (forget or {}).get("unit", "")
        if not gain or not forget:
            continue
        ex, ey = _err(forget), _err(gain)
        ax.errorbar(forget["value"], gain["value"], xerr=[[ex[0]], [ex[1]]],
                    yerr=[[ey[0]], [ey[1]]], fmt="o", capsize=3, label=arm["name"])
        pts.append((forget["value"], gain["value"]))
    front = sorted(p for p in pts if not any(
        q != p and q[0] <= p[0] and q[1] >= p[1] for q in pts))
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), "--", color="gray", lw=1, label="Pareto front")
    ax.axhline(0, color="black", lw=0.5)
    ax.axvline(0, color="black", lw=0.5)
    xlabel = f"forgetting {axis or ''}" + (f", {unit}" if unit else "") + " (lower is better)"
    return _finish(plt, fig, ax, path, title="Target gain vs forgetting", xlabel=xlabel,
                   ylabel="target gain, gsm8k flexible-extract (points)", legend=bool(pts))


def memorization_plot(arms: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Bars: memorization per arm and setting (ROUGE-L share above threshold; the
    difference-in-differences over held-out controls where the report has it), with
    95% intervals."""
    plt = _plt()
    settings = sorted({s for a in arms for s, m in (a.get("memorization") or {}).items()
                       if "rouge_l_above" in (m or {})})  # "loss" is in nats: not on this axis
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(arms) + 2), 4.2), dpi=120)
    width = 0.8 / max(1, len(settings))
    for j, setting in enumerate(settings):
        xs, ys, errs = [], [], [[], []]
        for i, arm in enumerate(arms):
            est = (arm.get("memorization") or {}).get(setting, {}).get("rouge_l_above")
            if not est:
                continue
            xs.append(i + (j - (len(settings) - 1) / 2) * width)
            ys.append(est["value"])
            e = _err(est)
            errs[0].append(e[0])
            errs[1].append(e[1])
        ax.bar(xs, ys, width=width, yerr=errs, capsize=3, label=setting)
    ax.set_xticks(range(len(arms)), [a["name"] for a in arms], rotation=20, ha="right")
    did = any(a.get("memorization_did") for a in arms)
    ax.axhline(0, color="black", lw=0.5)
    return _finish(plt, fig, ax, path, grid_axis="y", legend=bool(settings),
                   title="Memorization of training responses, vs the base model"
                   + (" and held-out controls" if did else ""),
                   ylabel="share ROUGE-L ≥ threshold: "
                   + ("Δ trained − Δ controls (points)" if did else "increase (points)"))


def loss_plot(arms: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Train (solid) and validation (dashed) loss by step, one colour per arm."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for i, arm in enumerate(arms):
        hist = arm.get("loss_history") or {}
        color = f"C{i}"
        train = [(e["step"], e["loss"]) for e in hist.get("train", []) if e.get("loss") is not None]
        val = [(e["step"], e["loss"]) for e in hist.get("eval", []) if e.get("loss") is not None]
        if train:
            ax.plot(*zip(*train, strict=True), color=color, label=f"{arm['name']} train")
        if val:
            ax.plot(*zip(*val, strict=True), "--o", color=color, ms=3,
                    label=f"{arm['name']} val")
    return _finish(plt, fig, ax, path, title="Loss curves", xlabel="step", ylabel="loss",
                   legend_size=7)


def saturation_plot(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path:
    """Target gain against training examples, per data source (log x)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for source, points in curves.items():
        xs = [p["examples"] for p in points]
        ys = [p["gain"]["value"] for p in points]
        errs = [[_err(p["gain"])[0] for p in points], [_err(p["gain"])[1] for p in points]]
        ax.errorbar(xs, ys, yerr=errs, fmt="-o", capsize=3, label=source)
        for p in points:
            if p.get("saturated"):
                ax.annotate("saturated", (p["examples"], p["gain"]["value"]),
                            textcoords="offset points", xytext=(4, -12), fontsize=7)
    ax.set_xscale("log")
    return _finish(plt, fig, ax, path, xlabel="training examples",
                   ylabel="target gain (points)",
                   title="Saturation: gain vs data size (+50% data for < 3 points = saturated)")


def _finish(plt, fig, ax, path: Path, *, title: str, ylabel: str, xlabel: str = "",
            grid_axis: str = "both", legend: bool = True, legend_size: int = 8) -> Path:
    """Label, grid, legend and save: the same finish for every plot."""
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis=grid_axis, alpha=0.3)
    if legend:
        ax.legend(fontsize=legend_size, loc="best")
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    """Lay out, write and close a figure (closing frees it: reports draw many)."""
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
