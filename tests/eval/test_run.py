"""``distill-eval run`` end to end: the smoke suite on the real test model with a
real LoRA adapter, the result cache, per-checkpoint numbers, and adapters that do
not fit the base model."""

from __future__ import annotations

import json

import pytest

from eval import runner
from eval.cache import ResultCache
from eval.compare import compare
from eval.loading import AdapterMismatchError
from eval.suite import load_suite
from tests.eval.helpers import make_run_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, test_model_dir, data_dir):
    root = tmp_path_factory.mktemp("eval-run")
    run = make_run_dir(root, test_model_dir, data_dir, checkpoints=(2,))
    cache = root / "cache"
    out = root / "out"
    results = runner.run_eval_sync(str(test_model_dir), load_suite("smoke"), out, adapter=run,
                                   data_dir=data_dir, cache=ResultCache(cache), progress=False)
    return {"root": root, "run": run, "cache": cache, "out": out, "results": results}


def test_smoke_suite_writes_results_with_intervals_and_deltas(smoke):
    results = json.loads((smoke["out"] / "results.json").read_text())
    metrics = results["metrics"]
    for name in ("gsm8k/strict_match", "gsm8k/flexible_extract", "gsm8k/truncated",
                 "reference_ppl/gsm8k_nll", "bbh/exact_match",
                 "bbh/boolean_expressions/exact_match", "wikitext/word_perplexity",
                 "wikitext/byte_perplexity", "wikitext/bits_per_byte",
                 "memorization/question/train/rouge_l_above",
                 "memorization/half_response/control/lcs_run", "reference_ppl/gsm8k",
                 "train_ppl", "fit/gap"):
        assert name in metrics, name
        m = metrics[name]
        assert {"value", "ci", "n", "higher_is_better", "group"} <= set(m)
    assert metrics["gsm8k/strict_match"]["n"] == 3 and metrics["bbh/exact_match"]["n"] == 2
    assert metrics["gsm8k/strict_match"]["higher_is_better"] is True
    assert metrics["wikitext/bits_per_byte"]["higher_is_better"] is False
    # Compared with the base model on the same items: base value and paired change.
    wiki = metrics["wikitext/word_perplexity"]
    assert wiki["delta"]["value"] == pytest.approx(wiki["value"] - wiki["base"]["value"])
    assert 1 < wiki["value"] < 1000
    ref = metrics["reference_ppl/gsm8k"]
    lo, hi = ref["ci"]
    assert lo <= ref["value"] <= hi
    assert "base" not in metrics["train_ppl"]  # measured under the base model only
    assert results["fit"] == {"train_loss": pytest.approx(1.2), "val_loss": 1.7,
                              "gap": pytest.approx(0.5)}
    summary = results["summary"]
    assert set(summary["forgetting"]) == {"bbh", "wikitext", "bbh_mc"}  # no "overall"
    assert set(summary["memorization_increase"]) == {"question", "half_response", "loss"}
    assert "target_gain" in summary
    assert [c["step"] for c in results["checkpoints"]] == [2]
    assert "reference_ppl/gsm8k" in results["checkpoints"][0]
    rows = [json.loads(line) for line in (smoke["out"] / "items.jsonl").read_text().splitlines()]
    subjects = {(r["metric"], r["subject"]) for r in rows}
    assert {("gsm8k", "model"), ("gsm8k", "base"), ("gsm8k", "checkpoint-2"),
            ("memorization", "model"), ("train_ppl", "model")} <= subjects
    gsm = next(r for r in rows if r["metric"] == "gsm8k")
    assert {"id", "output", "answer_strict", "strict_match", "stop_reason", "truncated"} <= set(gsm)
    # smoke gives 16 new tokens: the test model's answers are cut off there.
    assert metrics["gsm8k/truncated"]["value"] > 0
    ref_row = next(r for r in rows if r["metric"] == "reference_ppl")
    assert ref_row["nll_mean"] == pytest.approx(-ref_row["loglikelihood"] / ref_row["tokens"])


def test_rerun_is_served_from_the_cache(smoke, monkeypatch, tmp_path):
    def no_model(*args, **kwargs):
        raise AssertionError("a cached re-run must not load a model")

    monkeypatch.setattr(runner, "serve", no_model)
    cache = ResultCache(smoke["cache"])
    again = runner.run_eval_sync(smoke["results"]["model"]["path"], load_suite("smoke"),
                                 tmp_path / "again", adapter=smoke["run"],
                                 cache=cache, progress=False)
    assert cache.misses == 0 and cache.hits == smoke["results"]["cache"]["misses"]
    assert again["metrics"] == smoke["results"]["metrics"]


def test_compare_reads_the_recorded_smoke_results(smoke):
    report = compare([smoke["out"]], smoke["root"] / "report")
    assert [a["name"] for a in report["arms"]][1:] == ["run"]
    assert (smoke["root"] / "report" / "pareto.png").stat().st_size > 0


def test_adapter_that_does_not_fit_the_base_model(tmp_path, test_model_dir, data_dir):
    """A LoRA adapter trained on another architecture (a tiny random Llama with a
    different width) is refused before any evaluation, naming module and shapes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=4))
    run = make_run_dir(tmp_path, test_model_dir, data_dir, checkpoints=())
    get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(
        str(run / "adapter"))
    suite = load_suite("smoke", ["metrics=[gsm8k]"])
    with pytest.raises(AdapterMismatchError) as err:
        runner.run_eval_sync(str(test_model_dir), suite, tmp_path / "out", adapter=run,
                             data_dir=data_dir, cache=ResultCache(tmp_path / "c"), progress=False)
    msg = str(err.value)
    assert "does not fit" in msg and "q_proj" in msg and "lora_A expects 32 inputs" in msg
