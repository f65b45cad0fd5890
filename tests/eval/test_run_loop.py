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
    # One line per axis, each in its own unit: no "overall" mean of points and percents.
    assert list(summary["forgetting"]) == ["bbh", "wikitext", "bbh_mc"]
    # Accuracies: exact intervals, and their changes Newcombe's (never a bootstrap's
    # [0, 0] at 0/n), also per checkpoint.
    assert gsm["method"] == "Clopper-Pearson" and gsm["base"]["method"] == "Clopper-Pearson"
    assert gsm["delta"]["method"] == "Newcombe" and gsm["ci"][1] - gsm["ci"][0] > 0.3
    assert summary["target_gain"]["method"] == "Newcombe"
    assert summary["target_gain"]["ci"] == pytest.approx([100 * c for c in gsm["delta"]["ci"]])
    bbh_lo, bbh_hi = metrics["bbh/exact_match"]["delta"]["ci"]  # points lost: 100 (base - tuned)
    assert summary["forgetting"]["bbh"]["ci"] == pytest.approx([-100 * bbh_hi, -100 * bbh_lo])
    assert results["checkpoints"][0]["gsm8k/flexible_extract"]["method"] == "Clopper-Pearson"
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


def test_accuracy_intervals_in_results_are_exact():
    # 0/16 right: the exact 95% interval is [0, 1 - 0.025^(1/16)] = [0, 20.6%], where
    # a percentile bootstrap reads [0, 0]; 3/16 against the beta quantiles; the change
    # from a base of 0/16 is Newcombe's interval, which spans 0 at 3 discordant of 16.
    from scipy.stats import beta

    from eval.metrics.gsm8k import FLEXIBLE

    suite = load_suite("smoke")
    none = [{"id": f"g{i}", "flexible_extract": 0.0} for i in range(16)]
    three = [{"id": f"g{i}", "flexible_extract": float(i < 3)} for i in range(16)]
    entry = runner._measure_entry(FLEXIBLE, "target", {"model": three, "base": none}, suite)
    assert entry["base"]["value"] == 0.0 and entry["base"]["ci"][0] == 0.0
    assert entry["base"]["ci"][1] == pytest.approx(1 - 0.025 ** (1 / 16), abs=1e-9)
    assert entry["base"]["ci"][1] == pytest.approx(0.2059, abs=1e-4)
    assert entry["value"] == 3 / 16 and entry["method"] == "Clopper-Pearson"
    assert entry["ci"] == pytest.approx([beta.ppf(0.025, 3, 14), beta.ppf(0.975, 4, 13)],
                                        abs=1e-9)
    delta = entry["delta"]
    assert delta["value"] == pytest.approx(3 / 16) and delta["method"] == "Newcombe"
    assert delta["discordant"] == [3, 0] and delta["p_value"] == pytest.approx(0.25)
    assert delta["ci"][0] < 0 < 3 / 16 < delta["ci"][1]
