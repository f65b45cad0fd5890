"""The on-policy distillation job on tiny random models, the teacher on a real gRPC server.

The student is the shared 2-layer ``tiny_model``; the teacher another 2-layer Llama of
the same shape and tokenizer (smollm2's) but other weights, served in-process by
``teacher.serving.local.local_teacher`` through ``student.rollout.TeacherLink``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from student.cli import main
from student.data import StudentError
from student.on_policy_config import load_on_policy_config
from student.rollout import Sample, teacher_token_ids
from teacher.core.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, test_model_dir) -> Path:
    """A 2-layer Llama like ``tiny_model`` (same tokenizer), other random weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-teacher")
    tokenizer = AutoTokenizer.from_pretrained(test_model_dir)
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, initializer_range=0.1,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def job_args(student: Path, teacher: Path, data_dir: Path, *extra: str) -> list[str]:
    return [f"model={student}", f"teacher.model=tiny-teacher={teacher}", "teacher.engine=hf",
            f"data_dir={data_dir}", "prompts.limit=4", "sampling.samples_per_prompt=2",
            "sampling.max_new_tokens=6", "train.per_device_train_batch_size=2",
            "train.learning_rate=0.01", "lora.lora_dropout=0.0", *extra]


def manifest_of(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


# ---------------------------------------------------------------- the loss


def test_loss_equals_a_reference_computation_on_fixed_samples(tiny_model, tiny_teacher):
    """Teacher log-probs from a real Score call and the student's from the frozen-head
    kernel on a right-padded batch equal plain full-logits forwards of each sequence;
    the surrogate, the reverse-KL estimate and the LoRA gradient equal the formula's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from student.on_policy import build_batch, completion_logprobs, on_policy_loss
    from student.on_policy_config import TeacherConfig
    from student.rollout import TeacherLink, check_same_tokenizer, encode_chat

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}],
               [{"role": "user", "content": "Name a prime number larger than ten."}]]
    texts = ["2 + 3 = 5. The answer is 5.<|im_end|>", "Eleven is prime", "13<|im_end|>"]
    owner = [0, 1, 1]
    samples = [Sample(i, encode_chat(tok, prompts[i]),
                      tok(t, add_special_tokens=False)["input_ids"], t.endswith("<|im_end|>"))
               for i, t in zip(owner, texts, strict=True)]
    assert [len(s.completion_ids) for s in samples] == [15, 4, 3]

    link = TeacherLink(TeacherConfig(model=f"t={tiny_teacher}", engine="hf"))
    try:
        check_same_tokenizer(link, tok, prompts[0])
        results = link.score([(prompts[s.prompt_index], t) for s, t in zip(samples, texts,
                                                                             strict=True)])
    finally:
        link.close()
    for s, r in zip(samples, results, strict=True):
        assert list(r.token_ids) == s.completion_ids  # the teacher scored the sampled tokens

    torch.manual_seed(0)
    student = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher)
    batch = build_batch(samples, [s.completion_ids for s in samples],
                        [r.logprobs for r in results], tok.pad_token_id)
    lp = completion_logprobs(student.get_base_model(), batch["input_ids"],
                             batch["attention_mask"], batch["labels"])
    mask = batch["labels"][:, 1:] != -100
    loss, reverse_kl = on_policy_loss(lp, batch["teacher_logprobs"], mask)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}
    student.zero_grad()

    # Reference: each sequence alone (no padding), full logits, the formula term by term.
    terms, log_ratios = [], []
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        p, n = len(s.prompt_ids), len(s.completion_ids)
        target = ids[0, p:]
        logp_s = torch.log_softmax(student(input_ids=ids).logits[0, p - 1 : p - 1 + n], -1)
        with torch.no_grad():
            logp_t = torch.log_softmax(teacher(input_ids=ids).logits[0, p - 1 : p - 1 + n], -1)
        ls = logp_s.gather(-1, target[:, None])[:, 0]
        lt = logp_t.gather(-1, target[:, None])[:, 0]
        advantage = -(ls.detach() - lt)
        terms.append(-(advantage * ls))
        log_ratios.append(ls.detach() - lt)
        row = samples.index(s)
        assert torch.allclose(batch["teacher_logprobs"][row, p - 1 : p - 1 + n], lt, atol=1e-4)
        assert torch.allclose(lp[row, p - 1 : p - 1 + n], ls.detach(), atol=1e-4)
    ref_loss = torch.cat(terms).mean()
    ref_kl = torch.cat(log_ratios).mean()
    assert int(mask.sum()) == 22
    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), abs=1e-4)
    assert float(reverse_kl) == pytest.approx(float(ref_kl), abs=1e-4)
    assert abs(float(ref_kl)) > 0.01  # two different random models: a real divergence
    ref_loss.backward()
    for name, param in student.named_parameters():
        if param.requires_grad:
            assert torch.allclose(grads[name], param.grad, atol=1e-5, rtol=1e-4), name
            assert grads[name].abs().max() > 0, name


def test_a_student_that_is_its_teacher_has_nothing_to_learn(tiny_model, data_dir, tmp_path):
    """Teacher = the student's own base model: at the first step (LoRA B = 0, the
    student is its base) every sampled token's advantage is 0 -- the server's
    log-probs equal the training forward's -- so the reverse KL and the gradient are 0
    (to float rounding)."""
    from transformers import TrainerCallback

    from student.on_policy import train_on_policy

    seen: list[dict] = []

    class Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))

    cfg = load_on_policy_config(None, [f"model={tiny_model}", f"teacher.model=self={tiny_model}",
                                       "teacher.engine=hf", f"data_dir={data_dir}",
                                       "prompts.limit=2", "sampling.samples_per_prompt=3",
                                       "sampling.max_new_tokens=5", "train.max_steps=1",
                                       "lora.lora_dropout=0.0"])
    run = train_on_policy(cfg, tmp_path / "self", callbacks=[Logs()])
    m = manifest_of(run)
    assert m["global_step"] == 1 and m["on_policy"]["samples"] == 2 * 3
    (step,) = [e for e in seen if "reverse_kl" in e]
    assert abs(step["reverse_kl"]) < 1e-5 and abs(step["loss"]) < 1e-5
    assert step["grad_norm"] < 1e-5
    assert step["teacher_scored_tokens"] == m["on_policy"]["teacher_scored_tokens"] > 0


def test_a_teacher_with_another_vocabulary_is_refused(tiny_model, tmp_path):
    """A tiny teacher with Qwen2.5's tokenizer (the default models' family) against the
    smollm2-tokenized student: refused before any training, naming teacher.model."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from student.on_policy_config import TeacherConfig
    from student.rollout import TeacherLink, check_same_tokenizer
    from teacher.core import models

    qwen = models.model_dir(models.DEFAULT_STUDENT)
    if not models.is_prepared(qwen):
        pytest.skip(f"{models.DEFAULT_STUDENT} is not in the model cache")
    tokenizer = AutoTokenizer.from_pretrained(qwen)
    torch.manual_seed(2)
    other = tmp_path / "qwen-vocab-teacher"
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id)).save_pretrained(other)
    tokenizer.save_pretrained(other)
    link = TeacherLink(TeacherConfig(model=f"qwen={other}", engine="hf"))
    try:
        with pytest.raises(StudentError, match=r"teacher\.model: 'qwen' tokenizes the prompt"):
            check_same_tokenizer(link, AutoTokenizer.from_pretrained(tiny_model),
                                 [{"role": "user", "content": "What is 2 + 3?"}])
    finally:
        link.close()


def test_teacher_token_ids_align_or_refuse():
    assert teacher_token_ids([5, 6], [5, 6], [5, 6]) == ([5, 6], False)
    # A non-canonical sample: trained on the canonical tokens both tokenizers agree on.
    assert teacher_token_ids([5, 6, 7], [9, 7], [9, 7]) == ([9, 7], True)
    with pytest.raises(StudentError, match="vocabulary"):
        teacher_token_ids([5, 6], [1, 2, 3], [9, 7])


# ---------------------------------------------------------------- the job, killed and resumed

CRASH = """
import os, signal, sys
from transformers import TrainerCallback
from student.on_policy import train_on_policy
from student.on_policy_config import load_on_policy_config

class Crash(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, like an OOM kill

train_on_policy(load_on_policy_config(None, sys.argv[3:]), sys.argv[1], callbacks=[Crash()])
"""


def test_killed_run_resumes_to_the_same_step_and_token_counts(tiny_model, tiny_teacher,
                                                              data_dir, tmp_path):
    from student.on_policy import STATE_FILE, train_on_policy

    args = job_args(tiny_model, tiny_teacher, data_dir, "train.max_steps=4",
                    "train.save_steps=1")
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(killed), "2", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert manifest_of(killed)["completed"] is False
    at_kill = json.loads((killed / "checkpoints" / "checkpoint-2" / STATE_FILE).read_text())
    assert at_kill["samples"] == 2 * 2 * 2  # 2 steps x 2 prompts x 2 samples
    assert at_kill["teacher_scored_tokens"] > 0

    # Without --resume the unfinished run is refused; with it, it continues to step 4.
    assert main(["on-policy", "--out", str(killed), *args]) == 2
    assert main(["on-policy", "--out", str(killed), "--resume", *args]) == 0
    straight = train_on_policy(load_on_policy_config(None, args), tmp_path / "straight")

    a, b = manifest_of(killed), manifest_of(straight)
    assert a["completed"] and a["global_step"] == b["global_step"] == 4
    assert a["resumed_from"].endswith("checkpoint-2") and b["resumed_from"] is None
    # The counters survived the kill: restored from checkpoint-2, then steps 3-4 added;
    # the restored RNG and data order sample what the uninterrupted run sampled.
    assert a["on_policy"]["samples"] == b["on_policy"]["samples"] == 16
    assert a["on_policy"]["teacher_scored_tokens"] == b["on_policy"]["teacher_scored_tokens"]
    assert a["on_policy"]["teacher_scored_tokens"] > at_kill["teacher_scored_tokens"]
    assert a["train_tokens"] == b["train_tokens"]
    ha = json.loads((killed / "loss_history.json").read_text())
    hb = json.loads((straight / "loss_history.json").read_text())
    assert [p["step"] for p in ha["reverse_kl"]] == [1, 2, 3, 4]
    assert [p["loss"] for p in ha["reverse_kl"]] == pytest.approx(
        [p["loss"] for p in hb["reverse_kl"]], abs=1e-4)
    assert (killed / "adapter" / "adapter_model.safetensors").is_file()

    # The manifest records the teacher, the sampling, k and the scored tokens.
    op = a["on_policy"]
    assert op["teacher"]["model"] == "tiny-teacher"
    assert op["teacher"]["source"] == str(tiny_teacher)
    assert op["teacher"]["engine"] == "hf"
    assert op["teacher"]["address"].startswith("in-process")
    assert op["sampling"] == {"sampler": "in_process", "samples_per_prompt": 2,
                              "max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0}
    assert op["k"] == 0 and op["estimator"] == "sampled_token"
    assert set(op["step_cost_s"]) == {"sample", "score", "train"}
    assert all(v > 0 for v in op["step_cost_s"].values())
    assert op["student_sampled_tokens"] <= 16 * 6
    assert a["data"]["kind"] == "on_policy" and a["num_train_examples"] == 4
    assert len((killed / "train_examples.jsonl").read_text().splitlines()) == 4


# ---------------------------------------------------------------- config and CLI


def test_config_errors_name_the_key(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"sampling\.samples_per_prompt"):
        load_on_policy_config(None, ["sampling.samples_per_prompt=0"])
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        load_on_policy_config(None, ["train.max_steps=null"])
    with pytest.raises(ConfigError, match="did you mean 'sampling'"):
        load_on_policy_config(None, ["samplin.temperature=0.5"])
    capsys.readouterr()
    assert main(["on-policy", "--out", str(tmp_path / "r"), "sampling.temperature=0"]) == 2
    assert "sampling.temperature" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_on_policy_help():
    proc = subprocess.run([sys.executable, "-m", "student.cli", "on-policy", "--help"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "--resume" in proc.stdout and "reverse KL" in proc.stdout


def test_two_cpu_processes_count_every_rollout(tiny_model, tiny_teacher, data_dir, tmp_path):
    """Under accelerate (DDP over gloo) each process samples its own prompts and keeps
    its own counters beside its RNG state; the manifest sums them."""
    import os

    from tests.student.test_train import _free_port

    run = tmp_path / "ddp"
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file",
           str(REPO / "configs/accelerate/cpu_2proc.yaml"), "--main_process_port",
           str(_free_port()), "-m", "student.cli", "on-policy", "--out", str(run),
           *job_args(tiny_model, tiny_teacher, data_dir, "train.max_steps=2",
                     "train.save_steps=2", "train.per_device_train_batch_size=1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = manifest_of(run)
    assert m["completed"] and m["world_size"] == 2 and m["global_step"] == 2
    # 2 steps x 2 processes x 1 prompt x 2 samples
    assert m["on_policy"]["samples"] == 8
    ranks = [json.loads((run / "checkpoints" / "checkpoint-2" / f"on_policy_state_{r}.json")
                        .read_text()) for r in (0, 1)]
    assert [r["samples"] for r in ranks] == [4, 4]
    assert m["on_policy"]["teacher_scored_tokens"] == sum(r["teacher_scored_tokens"]
                                                          for r in ranks)
