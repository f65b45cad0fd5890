"""Offline top-k KD: the loss against a full-vocabulary reference, the side-file checks,
and a short real run on a tiny student with a tiny teacher's real top-k (fast on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from student.config import KDConfig, load_train_config
from student.data import StudentError
from student.kd import TopKLogProbs, kd_loss_from_hidden, use_kd_head
from teacher.core.config import ConfigError
from teacher.core.topk import TopK, TopKWriter, read_topk, side_path
from tests.student.test_data import record, write_records
from tests.student.test_train import FAST, manifest_of, overrides

TAILS = ["bucket", "renormalize", "zero"]


# ---------------------------------------------------------------- the loss, by numbers


def _teacher_rows(shape: tuple[int, int], vocab: int, k: int, seed: int):
    """A random full teacher distribution per position, cut to its top-k + tail."""
    g = torch.Generator().manual_seed(seed)
    full = torch.log_softmax(3 * torch.randn(*shape, vocab, generator=g), -1)
    lp, ids = full.topk(k, dim=-1)
    tail = torch.log1p(-lp.exp().sum(-1).clamp(max=1 - 1e-7))
    return ids, lp, tail


def _reference_kl(logits: torch.Tensor, ids: torch.Tensor, t_lp: torch.Tensor,
                  t_tail: torch.Tensor, tail: str, temperature: float) -> torch.Tensor:
    """KL(teacher top-k || student) from the student's full logits [n, vocab], plainly."""
    if tail == "renormalize":
        s_full = torch.log_softmax(logits / temperature, -1)  # tempered over the vocabulary
        s = s_full.gather(-1, ids)
        s = s - torch.logsumexp(s, -1, keepdim=True)
        t = torch.log_softmax(t_lp / temperature, -1)
        return (t.exp() * (t - s)).sum(-1)
    logp = torch.log_softmax(logits, -1)
    s = logp.gather(-1, ids)
    kl = (t_lp.exp() * (t_lp - s)).sum(-1)
    if tail == "zero":
        return kl
    on_ids = torch.zeros_like(logp, dtype=torch.bool).scatter_(-1, ids, True)
    s_rest = torch.log(logp.exp().masked_fill(on_ids, 0.0).sum(-1))
    return kl + t_tail.exp() * (t_tail - s_rest)


def _lora_model(path: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))


def _batch(vocab: int, k: int):
    torch.manual_seed(1)
    ids = torch.randint(5, 400, (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0  # a padded row
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[mask == 0] = -100
    kd_ids, kd_lp, kd_tail = _teacher_rows((3, 11), vocab, k, seed=2)
    kd_mask = labels[:, 1:] != -100
    kd_mask[:, -1] = False  # an end-of-turn token: labelled, no teacher row
    return ids, mask, labels, kd_ids, kd_lp, kd_tail, kd_mask


@pytest.mark.parametrize(("tail", "temperature"),
                         [("bucket", 1.0), ("zero", 1.0), ("renormalize", 1.0),
                          ("renormalize", 2.0)])
def test_kd_loss_and_gradients_equal_a_full_vocabulary_reference(tiny_model, tail, temperature):
    model = _lora_model(tiny_model)
    base = model.get_base_model()
    vocab, k, w = base.config.vocab_size, 8, 0.3
    ids, mask, labels, kd_ids, kd_lp, kd_tail, kd_mask = _batch(vocab, k)
    use_kd_head(base, KDConfig(weight=w, temperature=temperature, tail=tail))

    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=labels, kd_ids=kd_ids,
                kd_logprobs=kd_lp, kd_tail=kd_tail, kd_mask=kd_mask)
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # the full logits
    shifted = labels[:, 1:]
    on = shifted != -100
    ce = torch.nn.functional.cross_entropy(logits[on], shifted[on], reduction="sum")
    both = on & kd_mask
    kl = _reference_kl(logits[both], kd_ids[both], kd_lp[both], kd_tail[both], tail,
                       temperature)
    want = ((1 - w) * ce + w * temperature**2 * kl.sum()) / on.sum()
    want.backward()

    assert both.sum() == 19 and on.sum() == 21  # 2 labelled end tokens without a row
    assert torch.allclose(out.loss, want, atol=1e-5), (out.loss.item(), want.item())
    assert torch.allclose(out.kl[both], kl.detach(), atol=1e-5)
    assert (out.kl[~both] == 0).all() and out.kd_mask.equal(both)
    assert torch.allclose(out.ce[on], torch.nn.functional.cross_entropy(
        logits[on], shifted[on], reduction="none").detach(), atol=1e-5)
    assert len(got) == 8
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.allclose(got[name], param.grad, atol=1e-5, rtol=1e-4), name


def test_kl_of_the_teacher_itself_is_zero_and_the_bucket_bounds_the_full_kl():
    """A student equal to the teacher has KL 0 in every form; against another student the
    bucket KL is at most the full-vocabulary KL (the data-processing inequality)."""
    torch.manual_seed(0)
    n, hidden, vocab, k = 6, 8, 40, 5
    weight = torch.randn(vocab, hidden)
    h = torch.randn(n, hidden)
    teacher = torch.log_softmax(h @ weight.t(), -1)
    t_lp, t_ids = teacher.topk(k, -1)
    t_tail = torch.log1p(-t_lp.exp().sum(-1))
    labels = t_ids[:, 0]
    for tail in TAILS:
        out = kd_loss_from_hidden(h[None], weight, labels[None], t_ids[None], t_lp[None],
                                  t_tail[None], torch.ones(1, n, dtype=torch.bool),
                                  KDConfig(weight=1.0, tail=tail))
        assert out.kl.abs().max() < 1e-5, tail
    other = torch.randn(n, hidden)
    out = kd_loss_from_hidden(other[None], weight, labels[None], t_ids[None], t_lp[None],
                              t_tail[None], torch.ones(1, n, dtype=torch.bool),
                              KDConfig(weight=1.0, tail="bucket"))
    student = torch.log_softmax(other @ weight.t(), -1)
    full_kl = (teacher.exp() * (teacher - student)).sum(-1)
    assert (out.kl[0] <= full_kl + 1e-5).all() and (out.kl[0] > 0).all()


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_equals_unchunked(chunk):
    torch.manual_seed(0)
    n, hidden, vocab, k = 7, 16, 50, 4
    h = torch.randn(n, hidden, requires_grad=True)
    weight = torch.randn(vocab, hidden)
    targets = torch.randint(0, vocab, (n,))
    ids = torch.stack([torch.randperm(vocab)[:k] for _ in range(n)])
    g = (torch.randn(n), torch.randn(n, k), torch.randn(n))

    def run(c: int):
        h.grad = None
        outs = TopKLogProbs.apply(h, weight, targets, ids, c)
        sum((o * gi).sum() for o, gi in zip(outs[:3], g, strict=True)).backward()
        return [o.detach() for o in outs], h.grad.clone()

    (a, grad_a), (b, grad_b) = run(chunk), run(n)
    for x, y in zip(a, b, strict=True):
        assert torch.allclose(x.float(), y.float(), atol=1e-5)
    assert torch.allclose(grad_a, grad_b, atol=1e-5)
    with torch.no_grad():  # evaluation: no gradient buffers, the same values
        for x, y in zip(TopKLogProbs.apply(h, weight, targets, ids, chunk), b, strict=True):
            assert torch.equal(x, y) or torch.allclose(x.float(), y.float(), atol=1e-5)
    # and the unchunked values are the full-vocabulary ones
    logp = torch.log_softmax(h.detach() @ weight.t(), -1)
    assert torch.allclose(b[0], logp.gather(1, targets[:, None])[:, 0], atol=1e-5)
    assert torch.allclose(b[1], logp.gather(1, ids), atol=1e-5)
    rest = logp.scatter(1, ids, float("-inf")).logsumexp(-1)
    assert torch.allclose(b[2], rest, atol=1e-5)


def test_weight_zero_equals_the_sft_loss(tiny_model):
    from trl.trainer.utils import add_fused_lm_head

    from student.frozen_head import use_frozen_head

    model = _lora_model(tiny_model)
    base = model.get_base_model()
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    assert use_frozen_head(base)
    ids, mask, labels, kd_ids, kd_lp, kd_tail, kd_mask = _batch(base.config.vocab_size, 8)

    def loss_and_grads(**kwargs):
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=labels, **kwargs)
        out.loss.backward()
        return out, [p.grad.clone() for p in model.parameters() if p.requires_grad]

    sft, sft_grads = loss_and_grads(fused_lm_head=True)  # the job's SFT loss (frozen head)
    use_kd_head(base, KDConfig(weight=0.0))
    head_calls = []  # the head module builds [batch, length, vocab] logits; KD must not call it
    base.get_output_embeddings().register_forward_hook(lambda *a: head_calls.append(1))
    kd, kd_grads = loss_and_grads(kd_ids=kd_ids, kd_logprobs=kd_lp, kd_tail=kd_tail,
                                  kd_mask=kd_mask)
    assert head_calls == []
    assert torch.allclose(kd.loss, sft.loss, atol=1e-6)
    assert kd.kl[kd.kd_mask].sum() > 0  # computed, weighted 0
    for a, b in zip(kd_grads, sft_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # calls without kd_ids still take the SFT path
    again, _ = loss_and_grads(fused_lm_head=True)
    assert torch.allclose(again.loss, sft.loss)


# ---------------------------------------------------------------- side files and a real run


def _student_and_teacher(tiny_model: Path, out: Path) -> tuple[Path, Path]:
    """A tiny student with sharp logits, and a "teacher" that is the student with a
    rank-2 change to every value and output projection: a distribution the student's
    LoRA (r 16 on the attention projections) can reach, so KD has somewhere to go."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(5.0)  # tied: logits of std ~4
        model.save_pretrained(out / "student")
        for layer in model.model.layers:
            for proj in (layer.self_attn.v_proj, layer.self_attn.o_proj):
                rows, cols = proj.weight.shape
                proj.weight.add_(torch.randn(rows, 2, generator=g)
                                 @ torch.randn(2, cols, generator=g) * 0.5)
        model.save_pretrained(out / "teacher")
    for name in ("student", "teacher"):
        tokenizer.save_pretrained(out / name)
    return out / "student", out / "teacher"


def write_teacher_topk(teacher: Path, records_dir: Path, rows: list[dict], k: int) -> Path:
    """The teacher's real top-k over each record's response, as the data job stores it:
    prompt through the chat template, the response alone (teacher.serving.tokenization)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from teacher.serving.tokenization import PromptTokenizer

    tok = PromptTokenizer(AutoTokenizer.from_pretrained(teacher))
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    side = side_path(records_dir / "shard-00000.jsonl")
    with TopKWriter(side) as writer, torch.no_grad():
        for row in rows:
            prompt = tok.encode_prompt(row["prompt"])
            completion = tok.encode_completion(row["response"])
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]
            logp = torch.log_softmax(logits[len(prompt) - 1:-1].float(), -1)
            lp, ids = logp.topk(k, -1)
            tail = torch.log1p(-lp.exp().sum(-1).clamp(max=1 - 1e-7))
            writer.write(row["id"], TopK(ids.numpy(), lp.numpy(), tail.numpy()))
    return side


@pytest.fixture()
def kd_data(tiny_model, tmp_path):
    rows = [record(i) for i in range(6)]
    recs = write_records(tmp_path / "teacher", rows)
    student, teacher = _student_and_teacher(tiny_model, tmp_path / "models")
    side = write_teacher_topk(teacher, recs, rows, k=8)
    return recs, rows, side, student


def test_short_kd_run_lowers_the_kd_term_and_records_it(kd_data, tmp_path):
    from student.trainer import train

    recs, _, side, student = kd_data
    (recs / "job.json").write_text(json.dumps({"pinned": {}, "settings": {}, "top_k": {
        "k": 8, "model": "tiny-teacher", "vocab_size": 49152}}))
    cfg = load_train_config(None, overrides(
        student, recs, "data.val_size=2", "sft.max_steps=8", "sft.learning_rate=0.01",
        "sft.eval_strategy=steps", "sft.eval_steps=8", "sft.save_strategy=no",
        "sft.load_best_model_at_end=false", "kd.weight=0.5"))
    run = train(cfg, tmp_path / "run")

    m = manifest_of(run)
    kd = m["kd"]
    assert (kd["weight"], kd["temperature"], kd["tail"], kd["k"]) == (0.5, 1.0, "bucket", 8)
    assert kd["side_files"] == [str(side.absolute())]
    assert kd["student_vocab_size"] == 49152 and kd["teacher"]["model"] == "tiny-teacher"
    assert kd["teacher_tokens"] == sum(t.num_tokens for t in read_topk(side).values())
    assert m["config"]["kd"] == {"weight": 0.5, "temperature": 1.0, "tail": "bucket"}
    assert m["lm_head_loss"] == "topk_kd"
    history = json.loads((run / "loss_history.json").read_text())
    train_points = history["train"]
    (val,) = history["eval"]  # validation: the same mixed loss, on the held-out records
    assert val["kd_kl"] > 0 and 0.5 * val["ce"] + 0.4 * val["kd_kl"] < val["loss"]
    assert len(train_points) == 8
    kl = [p["kd_kl"] for p in train_points]
    ce = [p["ce"] for p in train_points]
    # The logged loss is the mix of its logged terms: ce is a mean over the labelled tokens,
    # kd_kl over those with a teacher row (all but the 2 end-of-turn tokens of ~25).
    for p in train_points:
        assert 0.5 * p["ce"] + 0.4 * p["kd_kl"] < p["loss"] <= 0.5 * p["ce"] + 0.5 * p["kd_kl"]
    assert all(x > 0 for x in kl)
    # measured: 8.25, 8.11 -> 3.82 (the student moves to the teacher)
    assert sum(kl[-2:]) / 2 < sum(kl[:2]) / 2 * 0.6, kl
    assert min(ce) < ce[0]


def test_kd_refuses_a_teacher_of_another_vocabulary_and_misaligned_rows(kd_data, tmp_path):
    from student.trainer import StudentRun

    recs, rows, side, student = kd_data
    base = overrides(student, recs, "data.val_size=0", "kd.weight=0.5")

    def check_error(*extra: str) -> str:
        run = StudentRun(load_train_config(None, [*base, *extra]), tmp_path / "run")
        with pytest.raises(StudentError) as info:
            run.check(resume=False, overwrite=False)
        assert not (tmp_path / "run").exists()  # refused before anything is written
        return str(info.value)

    good = side.read_bytes()
    # A teacher id past the student's vocabulary of 49,152 (a bigger teacher vocabulary).
    topk = TopK(np.array([[49152, *range(7)]], np.int32), np.full((1, 8), -3.0, np.float32),
                np.array([-0.2], np.float32))
    with TopKWriter(side) as writer:
        writer.write(rows[0]["id"], topk)  # a later frame of an id wins
    msg = check_error()
    assert "teacher token id 49152" in msg and "vocabulary of 49152" in msg
    assert rows[0]["id"] in msg and str(side) in msg

    # The data job's record of a teacher vocabulary that is not the student's.
    side.write_bytes(good)
    (recs / "job.json").write_text(json.dumps({"top_k": {"k": 8, "model": "big",
                                                          "vocab_size": 151936}}))
    msg = check_error()
    assert "vocabulary of 151936 tokens, the student of 49152" in msg
    (recs / "job.json").unlink()

    # Rows of another response (a token count that is not the student's).
    short = TopK(np.zeros((3, 8), np.int32) + np.arange(8, dtype=np.int32),
                 np.full((3, 8), -3.0, np.float32), np.full(3, -0.5, np.float32))
    with TopKWriter(side) as writer:
        writer.write(rows[1]["id"], short)
    msg = check_error()
    assert f"record {rows[1]['id']!r}: the teacher scored 3 response tokens" in msg

    # No side file at all.
    side.unlink()
    assert "no side files at all" in check_error()


def test_kd_config_checks():
    def error(*extra: str) -> str:
        with pytest.raises(ConfigError) as info:
            load_train_config(None, ["data.source=teacher", "data.path=x", *extra])
        return str(info.value)

    assert "kd.weight: must be in [0, 1]" in error("kd.weight=1.5")
    assert "kd.tail" in error("kd.tail=drop")
    assert "needs kd.tail 'renormalize'" in error("kd.temperature=2.0")
    assert "data.field 'response'" in error("kd.weight=0.5", "data.field=reference")
    assert "rationale_weight" in error("kd.weight=0.5", "rationale_weight=0.5")
    cfg = load_train_config(None, ["data.source=teacher", "data.path=x", "kd.tail=renormalize",
                                   "kd.temperature=2"])
    assert cfg.kd == KDConfig(weight=0.5, temperature=2.0, tail="renormalize")
    assert load_train_config(None, FAST).kd is None


def test_rows_line_up_with_the_response_tokens_and_a_misaligned_template_is_refused(
        tiny_model):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from student.kd_data import KDCollator, TeacherTopK, attach_topk
    from teacher.core.rundir import TrainExample
    from teacher.serving.tokenization import PromptTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    responses = {"a": "We add 2 and 1: 3.", "b": "Four."}
    examples = [TrainExample(rid, [{"role": "user", "content": "q"}], text)
                for rid, text in responses.items()]
    rows, tops = [], {}
    for n_prompt, (rid, text) in zip((5, 3), responses.items(), strict=True):
        response = PromptTokenizer(tokenizer).encode_completion(text)
        end_of_turn = [tokenizer.eos_token_id, 198]  # the template's tokens after the response
        ids = list(range(100, 100 + n_prompt)) + response + end_of_turn
        rows.append({"id": rid, "input_ids": ids,
                     "labels": [-100] * n_prompt + response + end_of_turn})
        t = len(response)
        tops[rid] = TopK(np.arange(t * 4, dtype=np.int32).reshape(t, 4) + 1000,
                         np.log(np.full((t, 4), 0.2, np.float32)) - np.arange(t)[:, None],
                         np.full(t, np.log(0.2), np.float32))
    topk = TeacherTopK(tops, 4, [])
    data = attach_topk(Dataset.from_list(rows), topk, examples, tokenizer)
    collate = KDCollator(DataCollatorForLanguageModeling(pad_token_id=0), 4)
    batch = collate([{k: v for k, v in row.items() if k != "id"} for row in data.to_list()])
    width = batch["input_ids"].shape[1]
    assert batch["kd_ids"].shape == (2, width - 1, 4)
    for i, (n_prompt, rid) in enumerate(zip((5, 3), responses, strict=True)):
        t = tops[rid].num_tokens
        lo = n_prompt - 1  # shifted position u predicts input token u + 1
        assert batch["kd_mask"][i].nonzero().squeeze(-1).tolist() == list(range(lo, lo + t))
        assert torch.equal(batch["kd_ids"][i, lo:lo + t], torch.from_numpy(
            tops[rid].token_ids).long())
        assert torch.equal(batch["kd_logprobs"][i, lo:lo + t],
                           torch.from_numpy(tops[rid].logprobs))
        # the label each row predicts is the response token it was scored for
        shifted = batch["labels"][i, 1:]
        assert shifted[lo:lo + t].tolist() == PromptTokenizer(tokenizer).encode_completion(
            responses[rid])
        assert (shifted[lo + t:lo + t + 2] != -100).all()  # end of turn: CE only, no row
    # A template that tokenizes the response otherwise: refused, naming the record.
    bad = dict(rows[0])
    bad["input_ids"] = [*bad["input_ids"][:7], 5, *bad["input_ids"][8:]]
    with pytest.raises(StudentError, match=r"record 'a': the chat template tokenizes the "
                                           r"response differently .* response token 2"):
        attach_topk(Dataset.from_list([bad]), topk, examples, tokenizer)
