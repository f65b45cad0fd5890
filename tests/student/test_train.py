"""The student training job end to end on a tiny random model (fast on CPU).

The tiny model is a 2-layer Llama built from a config and saved with the real
smollm2 tokenizer; the training data are short teacher records (tests/test_student_data).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from student import masking
from student.cli import main
from student.config import load_train_config
from teacher.core.rundir import TrainExample
from tests.student.test_data import record, write_records

REPO = Path(__file__).resolve().parents[2]

# Fast settings: no warmup, a constant high learning rate, micro-batches of 2.
FAST = ["sft.per_device_train_batch_size=2", "sft.per_device_eval_batch_size=2",
        "sft.gradient_accumulation_steps=1", "sft.warmup_steps=0",
        "sft.lr_scheduler_type=constant", "sft.max_length=128", "early_stopping_patience=null"]


@pytest.fixture()
def records(tmp_path) -> Path:
    return write_records(tmp_path / "teacher", [record(i) for i in range(6)])


def overrides(model: Path, records: Path, *extra: str) -> list[str]:
    return [f"model={model}", "data.source=teacher", f"data.path={records}", *FAST, *extra]


def manifest_of(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


# ---------------------------------------------------------------- a full run


def test_tiny_model_overfits_and_writes_the_run_directory(tiny_model, records, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from student.trainer import train

    cfg = load_train_config(None, overrides(
        tiny_model, records, "data.val_size=2", "sft.num_train_epochs=3",
        "sft.learning_rate=0.01", "merge=true"))
    run = train(cfg, tmp_path / "run")

    m = manifest_of(run)
    assert m["completed"] is True
    for key in ("base_model", "base_model_path", "data", "config", "dataset_fingerprint",
                "num_train_examples", "num_val_examples", "train_tokens", "wall_time_s",
                "tokens_per_s", "peak_memory_mb", "trainable_params", "total_params",
                "trainable_share", "adapter_size_mb", "seed", "packages", "git_commit"):
        assert key in m, key
    assert m["data"]["kind"] == "teacher" and m["data"]["task"] == "gsm8k"
    assert (m["num_train_examples"], m["num_val_examples"]) == (4, 2)
    assert m["precision"] == "fp32" and m["config"]["lora"]["r"] == 16
    assert 0 < m["trainable_share"] < 1 and m["tokens_per_s"] > 0
    assert m["lm_head_loss"] == "frozen_head"  # LoRA on CPU: student/frozen_head.py

    train_rows = [json.loads(x) for x in (run / "train_examples.jsonl").read_text().splitlines()]
    val_rows = [json.loads(x) for x in (run / "val_examples.jsonl").read_text().splitlines()]
    assert {r["id"] for r in train_rows}.isdisjoint({r["id"] for r in val_rows})
    assert set(train_rows[0]) == {"id", "prompt", "response"}

    history = json.loads((run / "loss_history.json").read_text())
    assert len(history["eval"]) == 3 and len(history["train"]) == 6
    losses = [p["loss"] for p in history["train"]]
    # The completion-only loss falls on the tiny overfit set.
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.5, losses
    assert (run / "loss_curve.png").stat().st_size > 0
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-2", "checkpoint-4", "checkpoint-6"]

    # The adapter is a standard peft adapter; the merged model is a plain model.
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 16
    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    student = PeftModel.from_pretrained(base, run / "adapter")
    prompt = tokenizer.apply_chat_template(train_rows[0]["prompt"], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = student.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 3
    merged = AutoModelForCausalLM.from_pretrained(run / "merged")
    with torch.no_grad():
        a = student(**prompt).logits
        b = merged(**prompt).logits
    assert torch.allclose(a, b, atol=1e-4)


def test_stm_curriculum_and_rationale_weight_run(tiny_model, tmp_path):
    from student.shaping import SCORES_CACHE
    from student.trainer import train

    # No recorded NLL: the curriculum falls back to the base model's, from the same pass as STM.
    rows = [record(i, response_nll=None) for i in range(4)]
    recs = write_records(tmp_path / "teacher", rows)
    cfg = load_train_config(None, overrides(
        tiny_model, recs, "data.val_size=0", "sft.max_steps=1", "token_mask_ppl=50000",
        "curriculum=easy_to_hard", "rationale_weight=0.7"))
    run = train(cfg, tmp_path / "run")
    shaping = manifest_of(run)["shaping"]
    (cache_file,) = run.glob(SCORES_CACHE.format(key="*"))
    cache = json.loads(cache_file.read_text())["logprobs"]
    expected = sum(math.exp(-lp) > 50000 for scores in cache for lp in scores)
    assert shaping["stm"]["masked_tokens"] == expected
    assert 0 < expected < shaping["stm"]["target_tokens"]  # a random model: some, not all
    nll = {r["id"]: masking.mean_nll(s) for r, s in zip(rows, cache, strict=True)}
    assert shaping["curriculum"]["nll_source"] == "base model"
    assert shaping["curriculum"]["first"] == min(nll, key=nll.get)
    assert shaping["curriculum"]["last"] == max(nll, key=nll.get)
    history = json.loads((run / "loss_history.json").read_text())
    assert math.isfinite(history["train"][0]["loss"])


def test_shape_dataset_masks_and_orders_exactly():
    from datasets import Dataset

    from student.shaping import shape_dataset

    ids = ["x/0", "x/1", "x/2"]
    ds = Dataset.from_list([
        {"id": ids[0], "input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]},
        {"id": ids[1], "input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
        {"id": ids[2], "input_ids": [5, 6, 7, 8], "labels": [-100, 6, 7, 8]},
    ])
    scores = [[-0.1, -2.0], [-1.0, -0.5], [-0.2, -0.3, -5.0]]  # ppl > 2.5 <=> lp < -0.916
    examples = [TrainExample(i, [], "r", nll=n) for i, n in zip(ids, [2.0, 0.5, 1.0],
                                                                 strict=True)]
    cfg = load_train_config(None, ["token_mask_ppl=2.5", "curriculum=easy_to_hard"])
    shaped, stats = shape_dataset(ds, cfg=cfg, examples=examples, tokenizer=None, scores=scores,
                                  with_answer_mask=False)
    assert shaped["id"] == ["x/1", "x/2", "x/0"]  # by recorded NLL
    assert shaped["labels"] == [[-100, -100, 3], [-100, 6, 7, -100], [-100, -100, 3, -100]]
    assert stats["stm"] == {"threshold": 2.5, "target_tokens": 7, "masked_tokens": 3,
                            "masked_share": round(3 / 7, 4)}
    assert stats["curriculum"]["nll_source"] == "teacher records"


# ---------------------------------------------------------------- kill and resume

CRASH = """
import os, signal, sys
from transformers import TrainerCallback
from student.config import load_train_config
from student.trainer import train

class Crash(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, like an OOM kill

train(load_train_config(None, sys.argv[3:]), sys.argv[1], callbacks=[Crash()])
"""


def test_kill_and_resume_matches_an_uninterrupted_run(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from student.trainer import train

    records = write_records(tmp_path / "teacher", [record(i) for i in range(4)])
    args = overrides(tiny_model, records, "data.val_size=0", "sft.num_train_epochs=2",
                     "sft.learning_rate=0.005", "sft.save_strategy=steps", "sft.save_steps=1",
                     "lora.lora_dropout=0.1")
    killed = tmp_path / "killed"
    # Killed after the checkpoint of step 1, in the middle of the first epoch.
    proc = subprocess.run([sys.executable, "-c", CRASH, str(killed), "1", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert manifest_of(killed)["completed"] is False
    assert (killed / "checkpoints" / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (killed / "adapter").exists()

    # Without --resume the unfinished run is refused; with it, it continues.
    assert main(["train", "--out", str(killed), *args]) == 2
    cfg = load_train_config(None, args)
    train(cfg, killed, resume=True)
    straight = train(cfg, tmp_path / "straight")

    a = load_file(killed / "adapter" / "adapter_model.safetensors")
    b = load_file(straight / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    import torch
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    la = [p["loss"] for p in json.loads((killed / "loss_history.json").read_text())["train"]]
    lb = [p["loss"] for p in json.loads((straight / "loss_history.json").read_text())["train"]]
    assert len(la) == len(lb) == 4
    assert la == pytest.approx(lb, abs=1e-4)
    m = manifest_of(killed)
    assert m["completed"] is True and m["resumed_from"].endswith("checkpoint-1")


# ---------------------------------------------------------------- accelerate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_cpu_processes(tiny_model, records, tmp_path):
    run = tmp_path / "ddp"
    accelerate = Path(sys.executable).with_name("accelerate")
    # accelerate's --cpu launcher starts a single process unless MPI is installed; the
    # shipped config starts two with torchrun, and the job joins them over gloo on CPU.
    cmd = [str(accelerate), "launch", "--config_file",
           str(REPO / "configs/accelerate/cpu_2proc.yaml"),
           "--main_process_port", str(_free_port()),
           "-m", "student.cli", "train", "--out", str(run),
           *overrides(tiny_model, records, "data.val_size=2", "sft.max_steps=2",
                      "sft.per_device_train_batch_size=1", "sft.eval_strategy=steps",
                      "sft.eval_steps=2", "sft.save_strategy=steps", "sft.save_steps=2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = manifest_of(run)
    assert m["completed"] is True and m["world_size"] == 2 and m["global_step"] == 2
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert len(json.loads((run / "loss_history.json").read_text())["eval"]) == 1


# ---------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors(test_model_dir, records, tmp_path, capsys):
    base = [f"model={test_model_dir}", "data.source=teacher", f"data.path={records}"]

    def error(*argv: str) -> str:
        capsys.readouterr()
        assert main(["train", *argv]) == 2
        return capsys.readouterr().err

    out = str(tmp_path / "run")
    assert "did you mean 'curriculum'" in error("--out", out, *base, "curriculm=easy_to_hard")
    assert "did you mean 'learning_rate'" in error("--out", out, *base, "sft.learning_rat=1")
    assert "unknown lora key lora.rank" in error("--out", out, *base, "lora.rank=4")
    assert "model: no such model directory" in error(
        "--out", out, *base, f"model={tmp_path / 'missing-model'}")
    assert "does not exist" in error("--out", out, *base,
                                     f"data.path={tmp_path / 'missing-data'}")
    assert "config file" in error("--config", str(tmp_path / "nope.yaml"), "--out", out)
    assert not (tmp_path / "run").exists()  # nothing was written for any of these

    # A directory holding another run is refused unless --overwrite; other folders always.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"completed": True}))
    assert "holds a completed run; pass --overwrite" in error("--out", out, *base)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert "holds no run" in error("--out", str(tmp_path / "other"), "--overwrite", *base)
    assert (tmp_path / "other" / "notes.txt").is_file()


def test_precision_and_checkpointing_follow_the_device(tmp_path):
    from student.arguments import sft_arguments

    cfg = load_train_config(None, [])
    cpu = sft_arguments(cfg, tmp_path, has_val=True, precision="fp32", device="cpu")
    assert (cpu.bf16, cpu.gradient_checkpointing, cpu.use_cpu) == (False, False, True)
    cuda = sft_arguments(cfg, tmp_path, has_val=True, precision="fp32", device="cuda")
    assert cuda.gradient_checkpointing and not cuda.use_cpu  # TRL's default on GPUs
    forced = sft_arguments(load_train_config(None, ["sft.gradient_checkpointing=true"]),
                           tmp_path, has_val=True, precision="fp32", device="cpu")
    assert forced.gradient_checkpointing


def test_help():
    proc = subprocess.run([sys.executable, "-m", "student.cli", "train", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--resume" in proc.stdout and "key=value" in proc.stdout


# ---------------------------------------------------------------- the real small model


@pytest.mark.slow
def test_smoke_config_on_the_real_test_model(data_dir, test_model_dir, tmp_path):
    run = tmp_path / "smoke"
    assert main(["train", "--config", str(REPO / "configs/student/smoke.yaml"), "--out", str(run),
                 "--data-dir", str(data_dir), f"model={test_model_dir}"]) == 0
    m = manifest_of(run)
    assert m["completed"] and m["global_step"] == 2 and m["num_train_examples"] == 6
    assert m["final_val_loss"] < 3.0  # an instruct model already knows the format
