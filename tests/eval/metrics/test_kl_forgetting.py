"""The kl_forgetting metric on a tiny random Llama with real peft adapters: its per-row
KL / NLL change / flip rate equal a direct computation (plain base model vs the merged
adapter, one unpadded sequence at a time, float64); a zero adapter gives 0; through
the runner it starts no service and skips the base model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from eval import runner
from eval.cache import ResultCache
from eval.metrics.kl_forgetting import KlForgetting, KlForgettingSettings, token_stats
from eval.metrics.model import ModelFiles
from eval.suite import load_suite
from teacher.core.config import ConfigError
from teacher.core.tasks import get_task
from tests.eval.helpers import make_run_dir

SMALL = KlForgettingSettings(documents=2, chunk_tokens=16, chunks_per_document=2,
                             bbh_subtasks=["boolean_expressions", "date_understanding"],
                             bbh_limit=1, batch_size=3)


def _adapter(model_dir: Path, out: Path, scale: float) -> Path:
    """A LoRA adapter on every attention and MLP projection; lora_B ~ N(0, scale)
    (scale 0: peft's own init, an adapter that changes nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and scale:
                p.normal_(0, scale)
    model.save_pretrained(str(out))
    return out


def _reference(model_dir: Path, adapter: Path, ids: list[int], scored_from: int
               ) -> dict[str, float]:
    """Per-token means by hand: base and merged model, float64, sum p (log p - log q)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32),
        str(adapter)).merge_and_unload().eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        lb = base(input_ids=x).logits[0].double()
        lt = tuned(input_ids=x).logits[0].double()
    pos = range(scored_from - 1, len(ids) - 1)
    kls, dnll, flips = [], [], []
    for i in pos:
        p, q = torch.softmax(lb[i], -1), torch.softmax(lt[i], -1)
        kls.append(float((p * (p.log() - q.log())).sum()))
        target = ids[i + 1]
        dnll.append(float(-q[target].log() + p[target].log()))
        flips.append(float(int(p.argmax()) != int(q.argmax())))
    n = len(kls)
    return {"kl": sum(kls) / n, "nll_change": sum(dnll) / n, "flip_rate": sum(flips) / n,
            "tokens": n}


def test_token_stats_match_the_definitions():
    import torch

    torch.manual_seed(0)
    base, tuned = torch.randn(5, 11) * 3, torch.randn(5, 11) * 3
    targets = torch.tensor([0, 3, 10, 7, 7])
    kl, dnll, flip = token_stats(base, tuned, targets)
    lp, lq = torch.log_softmax(base.double(), -1), torch.log_softmax(tuned.double(), -1)
    want_kl = (lp.exp() * (lp - lq)).sum(-1)
    assert torch.allclose(kl.double(), want_kl, atol=1e-5) and bool((kl >= 0).all())
    want_dnll = -lq[range(5), targets] + lp[range(5), targets]
    assert torch.allclose(dnll.double(), want_dnll, atol=1e-5)
    assert flip.tolist() == [float(a != b) for a, b in zip(base.argmax(-1).tolist(),
                                                           tuned.argmax(-1).tolist(),
                                                           strict=True)]
    same = token_stats(base, base, targets)
    assert same[0].abs().max() < 1e-6 and not same[1].any() and not same[2].any()


def test_rows_equal_a_direct_computation(tiny_model, data_dir, tmp_path):
    from teacher.serving.tokenization import PromptTokenizer

    adapter = _adapter(tiny_model, tmp_path / "adapter", scale=0.05)
    metric = KlForgetting(SMALL)
    data = metric.load(None, data_dir)
    assert [t.source for t in data] == ["wikitext"] * 2 + ["bbh"] * 2
    (rows,) = metric._compute(tiny_model, [adapter], data, None)
    tokenizer = PromptTokenizer.from_pretrained(str(tiny_model))
    seqs = metric.sequences(tokenizer, data)
    assert [r["id"] for r in rows] == [q.id for q in seqs]
    wiki = [r for r in rows if r["source"] == "wikitext"]
    assert len(wiki) == 4 and all(r["tokens"] == 16 for r in wiki)  # 2 docs x 2 chunks

    # WikiText chunks built independently: the document's tokens, 16 at a time, after BOS.
    doc = get_task("wikitext-2").load("test", data_dir, 1)[0].answer
    tokens = tokenizer.hf(doc, add_special_tokens=False)["input_ids"]
    second = [tokenizer.hf.bos_token_id, *tokens[16:32]]
    assert seqs[1].ids == second and seqs[1].scored_from == 1
    # A BBH item is scored from its question on (the chat template's head is context).
    bbh = seqs[4]
    question = get_task("bbh/boolean_expressions").load("test", data_dir, 1)[0].question
    assert tokenizer.hf.decode(bbh.ids[bbh.scored_from:]).lstrip().startswith(question[:10])
    assert tokenizer.hf.decode(bbh.ids).endswith(data[2].completion)  # then the reference

    for row, q in zip(rows, seqs, strict=True):
        want = _reference(tiny_model, adapter, q.ids, q.scored_from)
        assert row["tokens"] == want["tokens"]
        assert row["kl"] == pytest.approx(want["kl"], rel=1e-3, abs=1e-6), row["id"]
        assert row["nll_change"] == pytest.approx(want["nll_change"], rel=1e-3, abs=1e-5)
        assert row["flip_rate"] == pytest.approx(want["flip_rate"], abs=1e-9)
    assert min(r["kl"] for r in rows) > 1e-4  # the adapter does change the model
    names = [m.name for m in metric.measures()]
    assert names == [f"kl_forgetting/{s}/{f}" for s in ("wikitext", "bbh")
                     for f in ("kl", "nll_change", "flip_rate")]
    assert all(not m.higher_is_better for m in metric.measures())
    kl = metric.measures()[0]
    assert kl.aggregate_fn()(kl.select(rows)) == pytest.approx(
        math.fsum(r["kl"] for r in wiki) / 4)


async def test_an_adapter_that_changes_nothing_gives_zero(tiny_model, data_dir, tmp_path):
    adapter = _adapter(tiny_model, tmp_path / "zero", scale=0.0)
    metric = KlForgetting(SMALL)
    rows = await metric.compute(ModelFiles(tiny_model, adapter), metric.load(None, data_dir),
                                data_dir=data_dir)
    assert rows and all(abs(r["kl"]) < 1e-7 and r["kl_max"] < 1e-6 for r in rows)
    assert all(r["flip_rate"] == 0.0 and abs(r["nll_change"]) < 1e-6 for r in rows)
    with pytest.raises(ValueError, match="needs an adapter"):
        await metric.compute(ModelFiles(tiny_model, None), [], data_dir=data_dir)


@pytest.mark.parametrize(("override", "field"), [
    ({"sources": ["wikitext", "c4"]}, "sources"),
    ({"sources": []}, "sources"),
    ({"documents": 0}, "documents"),
    ({"chunk_tokens": 1}, "chunk_tokens"),
    ({"bbh_subtasks": ["navigat"]}, "bbh_subtasks"),
    ({"bbh_template": "gsm8k-cot-zeroshot"}, "bbh_template"),
    ({"bbh_template": "no-such"}, "bbh_template"),
    ({"dtype": "fp32"}, "dtype"),
    ({"batch_size": 0}, "batch_size"),
])
def test_settings_errors_name_the_field(override, field):
    with pytest.raises(ConfigError, match=rf"kl_forgetting\.{field}"):
        KlForgetting(KlForgettingSettings(**override)).validate()


def test_sources_shape_the_measures_and_the_cache_key(data_dir):
    wiki = KlForgetting(KlForgettingSettings(sources=["wikitext"], documents=1))
    assert wiki.measures()[0] == wiki.headline()
    assert all("/wikitext/" in m.name for m in wiki.measures())
    # One summary line (the continuous forgetting axis: KL, or on BBH without WikiText);
    # every other measure is compared between arms beside it.
    (term,) = wiki.summary()
    assert term.path == ("forgetting", "kl_wikitext") and term.measure == wiki.headline()
    assert [m.name for m in wiki.compared()] == ["kl_forgetting/wikitext/nll_change",
                                                 "kl_forgetting/wikitext/flip_rate"]
    bbh = KlForgetting(KlForgettingSettings(sources=["bbh"]))
    assert bbh.summary()[0].path == ("forgetting", "kl_bbh")
    other = KlForgetting(KlForgettingSettings(sources=["wikitext"], documents=1,
                                              chunk_tokens=128))
    data = wiki.load(None, data_dir)
    assert wiki.subset(data) != other.subset(data)  # settings are part of the key


def test_through_the_runner_no_service_and_no_base(tiny_model, tmp_path, data_dir,
                                                   monkeypatch):
    served: list = []
    monkeypatch.setattr(runner, "serve", lambda *a: served.append(a))
    run = make_run_dir(tmp_path, tiny_model, data_dir, checkpoints=(2,))
    suite = load_suite("smoke", ["metrics=[kl_forgetting]", "kl_forgetting.documents=1",
                                 "kl_forgetting.chunk_tokens=16",
                                 "kl_forgetting.bbh_subtasks=[boolean_expressions]",
                                 "kl_forgetting.bbh_limit=2", "kl_forgetting.checkpoints=true"])
    results = runner.run_eval_sync(str(tiny_model), suite, tmp_path / "out", adapter=run,
                                   data_dir=data_dir, cache=ResultCache(tmp_path / "cache"),
                                   progress=False)
    assert served == []  # in-process: the runner started no service
    entry = results["metrics"]["kl_forgetting/bbh/kl"]
    assert entry["group"] == "forgetting" and not entry["higher_is_better"]
    assert entry["n"] == 2 and entry["ci"][0] is not None and "base" not in entry
    assert results["checkpoints"][0]["kl_forgetting/wikitext/kl"]["n"] == 1
    # The summary's forgetting line is the KL itself (the rows are already vs the base).
    line = results["summary"]["forgetting"]["kl_wikitext"]
    assert line["value"] == pytest.approx(results["metrics"]["kl_forgetting/wikitext/kl"]["value"])
    assert line["unit"] == "KL(base ‖ tuned), nats per token" and line["n"] == 1
    rows = [json.loads(line) for line in (tmp_path / "out" / "items.jsonl").read_text()
            .splitlines()]
    assert {r["subject"] for r in rows} == {"model", "checkpoint-2"}  # never the base
    again = runner.run_eval_sync(str(tiny_model), suite, tmp_path / "again", adapter=run,
                                 data_dir=data_dir, cache=ResultCache(tmp_path / "cache"),
                                 progress=False)
    assert again["cache"]["misses"] == 0 and again["metrics"] == results["metrics"]
    no_run = runner.run_eval_sync(str(tiny_model), suite, tmp_path / "base", data_dir=data_dir,
                                  cache=ResultCache(tmp_path / "cache"), progress=False)
    assert "kl_forgetting" in no_run["skipped"] and served == []


async def test_many_adapters_at_once_equal_one_at_a_time(tiny_model, data_dir, tmp_path):
    """One base pass shared by several adapters gives each the rows it gets alone."""
    a = _adapter(tiny_model, tmp_path / "a", scale=0.05)
    b = _adapter(tiny_model, tmp_path / "b", scale=0.2)
    metric = KlForgetting(SMALL)
    data = metric.load(None, data_dir)
    together = await metric.compute_many(tiny_model, [a, b], data)
    alone = [await metric.compute(ModelFiles(tiny_model, d), data, data_dir=data_dir)
             for d in (a, b)]
    for rows_t, rows_a in zip(together, alone, strict=True):
        assert [r["id"] for r in rows_t] == [r["id"] for r in rows_a]
        for rt, ra in zip(rows_t, rows_a, strict=True):
            assert rt["kl"] == pytest.approx(ra["kl"], rel=1e-5, abs=1e-9)
            assert rt["nll_change"] == pytest.approx(ra["nll_change"], rel=1e-5, abs=1e-8)
            assert rt["flip_rate"] == ra["flip_rate"]
    # The bigger adapter moved the model further on every row.
    assert all(rb["kl"] > ra["kl"] for ra, rb in zip(*together, strict=True))


def test_precompute_shared_fills_the_cache_run_eval_reads(tiny_model, tmp_path, data_dir):
    runs = [make_run_dir(tmp_path / f"r{i}", tiny_model, data_dir) for i in range(2)]
    overrides = ["metrics=[kl_forgetting]", "kl_forgetting.documents=1",
                 "kl_forgetting.chunk_tokens=16",
                 "kl_forgetting.bbh_subtasks=[boolean_expressions]", "kl_forgetting.bbh_limit=1"]
    cache = ResultCache(tmp_path / "cache")
    timings = runner.asyncio.run(runner.precompute_shared(
        str(tiny_model), load_suite("smoke", overrides), runs, data_dir=data_dir, cache=cache))
    assert set(timings) == {"kl_forgetting"}
    for i, run in enumerate(runs):
        results = runner.run_eval_sync(str(tiny_model), load_suite("smoke", overrides),
                                       tmp_path / f"out{i}", adapter=run, data_dir=data_dir,
                                       cache=ResultCache(tmp_path / "cache"), progress=False)
        assert results["cache"]["misses"] == 0 and results["cache"]["hits"] >= 1
        fresh = runner.run_eval_sync(str(tiny_model), load_suite("smoke", overrides),
                                     tmp_path / f"fresh{i}", adapter=run, data_dir=data_dir,
                                     cache=ResultCache(tmp_path / f"c{i}"), progress=False)
        got, want = (r["metrics"]["kl_forgetting/wikitext/kl"] for r in (results, fresh))
        assert got["value"] == pytest.approx(want["value"], rel=1e-5)
