"""The run's loss history (``loss_history.json``) from the Trainer's log, and its plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

LossHistory = dict[str, list[dict[str, Any]]]


def loss_history(log_history: Sequence[dict[str, Any]]) -> LossHistory:
    """{"train": [{step, epoch, loss}], "eval": [...]} from ``trainer.state.log_history``."""
    history: LossHistory = {"train": [], "eval": []}
    for entry in log_history:
        for key, split in (("loss", "train"), ("eval_loss", "eval")):
            if key in entry:
                history[split].append({"step": entry.get("step"), "epoch": entry.get("epoch"),
                                       "loss": entry[key]})
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
