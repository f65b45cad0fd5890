"""The run's loss history (``loss_history.json``) from the Trainer's log, and its plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

LossHistory = dict[str, list[dict[str, Any]]]
KD_TERMS = ("ce", "kd_kl")  # the KD loss's logged terms (student.sft_trainer)


def loss_history(log_history: Sequence[dict[str, Any]]) -> LossHistory:
    """{"train": [{step, epoch, loss}], "eval": [...]} from ``trainer.state.log_history``;
    a KD run's points also hold their two terms, ``ce`` and ``kd_kl`` (per-token means)."""
    history: LossHistory = {"train": [], "eval": []}
    for entry in log_history:
        for prefix, split in (("", "train"), ("eval_", "eval")):
            if f"{prefix}loss" in entry:
                point = {"step": entry.get("step"), "epoch": entry.get("epoch"),
                         "loss": entry[f"{prefix}loss"]}
                point.update({term: entry[f"{prefix}{term}"] for term in KD_TERMS
                              if f"{prefix}{term}" in entry})
                history[split].append(point)
    return history


def plot_loss_curve(history: LossHistory, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for split, style in (("train", "-"), ("eval", "o-")):
        points = history[split]
        if points:
            ax.plot([p["step"] for p in points], [p["loss"] for p in points], style,
                    label="validation" if split == "eval" else split)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (completion tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
