"""Builds student run directories for the eval tests (the run-dir contract of
``teacher.core.rundir``), with a real peft LoRA adapter on the test model, without
training one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from teacher.core import rundir
from teacher.core.tasks import get_task


def write_examples(path: Path, examples: list[Any]) -> None:
    task = get_task("gsm8k")
    rundir.write_examples(path, [rundir.TrainExample(ex.id, task.prompt(ex),
                                                     task.reference_response(ex))
                                 for ex in examples])


def save_adapter(model_dir: Path, out: Path, seed: int, rank: int = 4,
                 target_modules: tuple[str, ...] = ("q_proj", "v_proj")) -> None:
    """A LoRA adapter with small random (non-zero) B matrices, so it changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank,
                                            target_modules=list(target_modules)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.002)
    model.save_pretrained(str(out))


def make_run_dir(root: Path, model_dir: Path, data_dir: Path, *, name: str = "run",
                 seed: int = 1, checkpoints: tuple[int, ...] = (2,), kind: str = "ground_truth",
                 num_train: int = 6, config: dict | None = None,
                 manifest: dict | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    save_adapter(model_dir, run / "adapter", seed)
    for step in checkpoints:
        save_adapter(model_dir, run / "checkpoints" / f"checkpoint-{step}", seed + step)
    train = get_task("gsm8k").load("train", data_dir, limit=num_train + 4)
    write_examples(run / "train_examples.jsonl", train[:num_train])
    write_examples(run / "val_examples.jsonl", train[num_train:])
    history = {
        "train": [{"step": s, "epoch": s / 4, "loss": 2.0 - 0.2 * s} for s in range(1, 5)],
        "eval": [{"step": 2, "epoch": 0.5, "loss": 1.9}, {"step": 4, "epoch": 1.0, "loss": 1.7}],
    }
    (run / "loss_history.json").write_text(json.dumps(history))
    data: dict[str, Any] = {"kind": kind, "task": "gsm8k"}
    if kind == "teacher":
        data.update({"path": "teacher-out", "mode": "trace"})
    body = {
        "base_model": "smollm2-135m-instruct", "base_model_path": str(model_dir), "data": data,
        "config": config or {"training": {"max_steps": 4, "learning_rate": 2e-4},
                             "lora": {"r": 4}, "data": {"limit": num_train}},
        "dataset_fingerprint": f"fp-{name}", "num_train_examples": num_train,
        "num_val_examples": 4, "train_tokens": 1000 * num_train, "wall_time_s": 12.5,
        "tokens_per_s": 80.0, "peak_memory_mb": 900.0, "trainable_params": 100,
        "total_params": 135_000_000, "trainable_share": 1e-6, "adapter_size_mb": 0.5,
        "seed": seed, "packages": {}, "git_commit": "", "completed": True,
        **(manifest or {}),
    }
    (run / "manifest.json").write_text(json.dumps(body))
    return run
