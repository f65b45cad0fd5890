"""``fit``: final train loss, validation loss and their gap, from the run's loss
history (no model needed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eval.metrics.base import RunMetric, register_metric


def fit_values(history: Mapping[str, Any]) -> dict[str, float | None]:
    """Final train loss, final validation loss and their gap (val - train)."""
    train = [e["loss"] for e in history.get("train", []) if e.get("loss") is not None]
    val = [e["loss"] for e in history.get("eval", []) if e.get("loss") is not None]
    final_train = float(train[-1]) if train else None
    final_val = float(val[-1]) if val else None
    gap = final_val - final_train if final_train is not None and final_val is not None else None
    return {"train_loss": final_train, "val_loss": final_val, "gap": gap}


@register_metric
class Fit(RunMetric):
    name = "fit"
    group = "fit"
    description = "final train loss, validation loss and their gap"

    def values(self, run: Any) -> dict[str, float | None]:
        return fit_values(run.loss_history())
