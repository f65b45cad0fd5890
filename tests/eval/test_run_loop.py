"""The runner's generic loop over a suite's metrics, on a tiny random model (built
from a config, served through the real service with real LoRA adapters merged):
every metric's rows, measures, deltas from the base model, summary, per-checkpoint
table, the cache, and what is skipped without a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval import runner
from eval.cache import ResultCache
from eval.suite import load_suite
from tests.eval.helpers import make_run_dir


@pytest.fixture
def served(monkeypatch) -> list[Path | None]:
    """The adapter directory of each model the runner serves (``None``: the base)."""
    seen: list[Path | None] = []
    serve = runner.serve

    def recording(base_path, adapter_dir, engine):
        seen.append(adapter_dir)
        return serve(base_path, adapter_dir, engine)

    monkeypatch.setattr(runner, "serve", recording)
    return seen


def test_every_metric_through_the_loop(served, tiny_model, tmp_path, data_dir):
    run = make_run_dir(tmp_path, tiny_model, data_dir, checkpoints=(2,))
    cache = ResultCache(tmp_path / "cache")
    results = runner.run_eval_sync(str(tiny_model), load_suite("smoke"), tmp_path / "out",
                                   adapter=run, data_dir=data_dir, cache=cache, progress=False)
    assert served == [run / "adapter", None, run / "checkpoints" / "checkpoint-2"]
    metrics = results["metrics"]
    for name in ("gsm8k/flexible_extract", "gsm8k/strict_match", "gsm8k/truncated",
                 "bbh/exact_match", "bbh/boolean_expressions/exact_match",
                 "wikitext/bits_per_byte", "memorization/half_response/train/rouge_l",
                 "reference_ppl/gsm8k", "train_ppl", "fit/gap", "bbh_mc/acc",
                 "bbh_mc/date_understanding/acc"):
        assert name in metrics, name
    gsm = metrics["gsm8k/flexible_extract"]  # the headline
    assert gsm["group"] == "target"
    assert gsm["delta"]["value"] == pytest.approx(gsm["value"] - gsm["base"]["value"])
    ref = metrics["reference_ppl/gsm8k"]
    assert ref["delta"]["value"] == pytest.approx(ref["value"] - ref["base"]["value"])
    assert "base" not in metrics["train_ppl"]  # base model only
    assert results["fit"] == {"train_loss": pytest.approx(1.2), "val_loss": 1.7,
                              "gap": pytest.approx(0.5)}
    summary = results["summary"]
    assert list(summary) == ["target_gain", "forgetting", "memorization_increase"]
    assert list(summary["forgetting"]) == ["bbh", "wikitext", "bbh_mc", "overall"]
    mc = metrics["bbh_mc/acc"]  # scored options on the served model: an exact interval of k/n
    assert mc["n"] == 4 and mc["method"] == "Clopper-Pearson" and mc["higher_is_better"]
    assert mc["ci"][0] <= mc["value"] <= mc["ci"][1] and mc["ci"][1] - mc["ci"][0] > 0.3
    assert summary["target_gain"]["value"] == pytest.approx(100 * gsm["delta"]["value"])
    assert set(summary["memorization_increase"]) == {"question", "half_response", "loss"}
    assert results["checkpoints"][0]["step"] == 2
    assert {"gsm8k/flexible_extract", "reference_ppl/gsm8k"} <= set(results["checkpoints"][0])
    lines = (tmp_path / "out" / "items.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert {(r["metric"], r["subject"]) for r in rows} >= {
        ("gsm8k", "checkpoint-2"), ("reference_ppl", "checkpoint-2"), ("train_ppl", "model")}
    assert not any(r["subject"] == "checkpoint-2" and r["metric"] == "bbh" for r in rows)
    mc_rows = [r for r in rows if r["metric"] == "bbh_mc" and r["subject"] == "model"]
    assert len(mc_rows) == 4 and all(len(r["loglikelihoods"]) == len(r["options"]) >= 2
                                     and r["acc"] in (0.0, 1.0) for r in mc_rows)

    again = runner.run_eval_sync(str(tiny_model), load_suite("smoke"), tmp_path / "again",
                                 adapter=run, data_dir=data_dir,
                                 cache=ResultCache(tmp_path / "cache"), progress=False)
    assert len(served) == 3 and again["cache"]["misses"] == 0  # all from the cache
    assert again["metrics"] == metrics


def test_without_a_run_dir_the_run_metrics_are_skipped(served, tiny_model, tmp_path, data_dir):
    results = runner.run_eval_sync(str(tiny_model), load_suite("smoke"), tmp_path / "out",
                                   data_dir=data_dir, cache=ResultCache(tmp_path / "c"),
                                   progress=False)
    assert set(results["skipped"]) == {"memorization", "train_ppl", "fit"}
    assert served == [None] and results["summary"] == {} and results["checkpoints"] == []
    assert "base" not in results["metrics"]["gsm8k/strict_match"]  # the base model is the model
