"""The runner's generic loop over a suite's metrics, on a stand-in model (no model
loaded): every metric's rows, measures, deltas from the base model, summary,
per-checkpoint table, the cache, and what is skipped without a run directory."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from eval import runner
from eval.cache import ResultCache
from eval.suite import load_suite
from teacher.core.tasks import get_task
from tests.eval.helpers import write_examples
from tests.eval.metrics.fakes import FakeModel


def fake_run_dir(root: Path, data_dir: Path) -> Path:
    """A run dir whose adapters are placeholder files (hashed, never loaded)."""
    run = root / "run"
    for folder in (run / "adapter", run / "checkpoints" / "checkpoint-2"):
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps({"r": folder.name}))
        (folder / "adapter_model.safetensors").write_bytes(folder.name.encode())
    train = get_task("gsm8k").load("train", data_dir, limit=6)
    write_examples(run / "train_examples.jsonl", train[:4])
    write_examples(run / "val_examples.jsonl", train[4:])
    (run / "loss_history.json").write_text(json.dumps(
        {"train": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}],
         "eval": [{"step": 2, "loss": 1.75}]}))
    (run / "manifest.json").write_text(json.dumps({"completed": True, "data": {"kind": "x"}}))
    return run


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """``serve`` hosts nothing; each subject is a FakeModel that answers "#### 18"
    with an adapter and nothing without, and records that it was served."""
    served: list[Path | None] = []

    @contextlib.asynccontextmanager
    async def serve(base_path, adapter_dir, engine):
        served.append(adapter_dir)
        yield adapter_dir

    def model_of(adapter_dir):
        return FakeModel(lambda prompt: "#### 18" if adapter_dir is not None else "")

    monkeypatch.setattr(runner, "serve", serve)
    monkeypatch.setattr(runner, "ServedModel", model_of)
    base = tmp_path / "base-model"
    base.mkdir()
    (base / "config.json").write_text("{}")
    return base, served


def test_every_metric_through_the_loop(stand_in, tmp_path, data_dir):
    base, served = stand_in
    run = fake_run_dir(tmp_path, data_dir)
    cache = ResultCache(tmp_path / "cache")
    results = runner.run_eval_sync(str(base), load_suite("smoke"), tmp_path / "out",
                                   adapter=run, data_dir=data_dir, cache=cache, progress=False)
    assert len(served) == 3  # the adapter, the base, checkpoint-2
    metrics = results["metrics"]
    for name in ("gsm8k/strict_match", "bbh/exact_match", "bbh/boolean_expressions/exact_match",
                 "wikitext/bits_per_byte", "memorization/half_response/train/rouge_l",
                 "reference_ppl/gsm8k", "train_ppl", "fit/gap"):
        assert name in metrics, name
    gsm = metrics["gsm8k/strict_match"]
    assert gsm["group"] == "target" and gsm["base"]["value"] == 0.0
    assert gsm["delta"]["value"] == pytest.approx(gsm["value"])
    assert "base" not in metrics["train_ppl"]  # base model only
    assert results["fit"] == {"train_loss": 1.5, "val_loss": 1.75, "gap": 0.25}
    summary = results["summary"]
    assert list(summary) == ["target_gain", "forgetting", "memorization_increase"]
    assert list(summary["forgetting"]) == ["bbh", "wikitext", "overall"]
    assert summary["target_gain"]["value"] == pytest.approx(100 * gsm["value"])
    assert set(summary["memorization_increase"]) == {"question", "half_response"}
    assert results["checkpoints"][0]["step"] == 2
    assert {"gsm8k/strict_match", "reference_ppl/gsm8k"} <= set(results["checkpoints"][0])
    lines = (tmp_path / "out" / "items.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert {(r["metric"], r["subject"]) for r in rows} >= {
        ("gsm8k", "checkpoint-2"), ("reference_ppl", "checkpoint-2"), ("train_ppl", "model")}
    assert not any(r["subject"] == "checkpoint-2" and r["metric"] == "bbh" for r in rows)

    again = runner.run_eval_sync(str(base), load_suite("smoke"), tmp_path / "again",
                                 adapter=run, data_dir=data_dir,
                                 cache=ResultCache(tmp_path / "cache"), progress=False)
    assert len(served) == 3 and again["cache"]["misses"] == 0  # all from the cache
    assert again["metrics"] == metrics


def test_without_a_run_dir_the_run_metrics_are_skipped(stand_in, tmp_path, data_dir):
    base, served = stand_in
    results = runner.run_eval_sync(str(base), load_suite("smoke"), tmp_path / "out",
                                   data_dir=data_dir, cache=ResultCache(tmp_path / "c"),
                                   progress=False)
    assert set(results["skipped"]) == {"memorization", "train_ppl", "fit"}
    assert served == [None] and results["summary"] == {} and results["checkpoints"] == []
    assert "base" not in results["metrics"]["gsm8k/strict_match"]  # the base model is the model
