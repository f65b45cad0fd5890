"""The fit metric: final losses and their gap from the run's loss history."""

from __future__ import annotations

from eval.metrics.fit import Fit, fit_values


def test_fit_values_from_loss_history():
    hist = {"train": [{"step": 1, "epoch": 0.5, "loss": 2.0}, {"step": 2, "epoch": 1, "loss": 1.5}],
            "eval": [{"step": 2, "epoch": 1, "loss": 1.75}]}
    assert fit_values(hist) == {"train_loss": 1.5, "val_loss": 1.75, "gap": 0.25}
    assert fit_values({"train": [], "eval": []})["gap"] is None


def test_fit_entries_skip_missing_values():
    entries = Fit().entries({"train_loss": 1.5, "val_loss": None, "gap": None})
    assert entries == {"fit/train_loss": {"group": "fit", "higher_is_better": False,
                                          "value": 1.5, "ci": [None, None], "n": 1}}
