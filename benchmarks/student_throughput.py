"""Student training throughput and memory: the job vs a plain peft + PyTorch loop.

Arms, each in its own process (so its peak memory is its own), on the same model,
GSM8K ground-truth examples, batches (same order), sequence lengths and precision:

* ``job``          ``student.trainer.train`` (TRL SFTTrainer + peft, our settings; its loss
                   never builds the full logits: student/frozen_head.py);
* ``plain``        a hand-written peft + PyTorch loop on the model's own loss: the floor
                   (target: job within 10%);
* ``plain_fused``  the plain loop on the job's loss kernel (TRL's fused head, with
                   student/frozen_head.py over it): the job's own overhead, apart from its loss;
* ``trl_defaults`` a plain TRL ``SFTTrainer`` script on TRL's defaults (bf16 and
                   gradient checkpointing on: very slow on a CPU without native bf16);
* ``full_ft``      the plain loop training every weight, its loss through TRL's fused LM
                   head (no full logits either, so the memory gap to ``job`` is what LoRA
                   saves; target: LoRA at least 2x lower).

Training tokens/s counts the non-pad tokens of the timed steps (the first step is a
warm-up and not timed). Also reported: trainable-parameter share, adapter size vs model
size. Prints a table and writes JSON.

    python benchmarks/student_throughput.py --model qwen2.5-coder-0.5b-instruct --steps 6 \
        --out benchmarks/results/student_throughput_qwen2.5-coder-0.5b-instruct.json
    ... --gradient-checkpointing --out ..._checkpointing.json  # memory-lean, both arms
    ... --batch-size 1 --steps 16 --out ..._batch1.json         # micro-batches of 1
    python benchmarks/student_throughput.py --model smollm2-135m-instruct   # quick

(default output benchmarks/results/student_throughput.json; --out to change). The memory
ratio depends on the activations, the same in both arms: at batch 4 x ~400 positions
without checkpointing they outweigh the optimizer state LoRA saves (README's table).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARMS = ("job", "plain", "plain_fused", "trl_defaults", "full_ft")
TARGET_JOB_VS_PLAIN = 0.90  # the job keeps at least 90% of the plain loop's tokens/s
TARGET_MEMORY_RATIO = 2.0  # full fine-tuning peak / LoRA peak


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- shared data


def load_pairs(args: argparse.Namespace) -> list[Any]:
    from student.config import load_train_config
    from student.data import load_examples

    cfg = load_train_config(None, [f"data.limit={args.examples}"])
    return load_examples(cfg.data, args.data_dir)


def tokenize(tokenizer: Any, pairs: list[Any], max_length: int) -> list[dict[str, list[int]]]:
    """TRL's prompt-completion rule: the completion starts where prompt and full diverge."""
    rows = []
    for ex in pairs:
        prompt = tokenizer.apply_chat_template(ex.prompt, add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(
            [*ex.prompt, {"role": "assistant", "content": ex.response}], tokenize=True,
            return_dict=True)["input_ids"]
        cut = next((i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b),
                   min(len(prompt), len(full)))
        labels = [-100] * cut + full[cut:]
        rows.append({"input_ids": full[:max_length], "labels": labels[:max_length]})
    return rows


def batches(rows: list[dict[str, list[int]]], batch_size: int, steps: int, pad_id: int):
    import torch

    for step in range(steps):
        start = (step * batch_size) % len(rows)
        chunk = [rows[(start + i) % len(rows)] for i in range(batch_size)]
        width = max(len(r["input_ids"]) for r in chunk)
        ids = torch.full((batch_size, width), pad_id)
        labels = torch.full((batch_size, width), -100)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for i, r in enumerate(chunk):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}, int(mask.sum())


def lora_settings() -> dict[str, Any]:
    from student.config import default_lora

    return default_lora()


# ---------------------------------------------------------------- arms


def arm_plain(args: argparse.Namespace, model_path: Path, *, lora: bool,
              fused: bool = False) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    loaded_rss = peak_rss_mb()
    if args.gradient_checkpointing:  # keep layer inputs only, recompute the rest
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if fused:
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as TRL's SFT
    if lora:
        model = get_peft_model(model, LoraConfig(**lora_settings()))
        if fused:
            from student.frozen_head import use_frozen_head

            use_frozen_head(model.get_base_model())
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01)
    rows = tokenize(tokenizer, load_pairs(args), args.max_length)
    steps = args.steps if lora or args.full_ft_steps is None else args.full_ft_steps
    times, tokens = [], []
    for batch, n_tokens in batches(rows, args.batch_size, steps + 1, tokenizer.pad_token_id):
        start = time.perf_counter()
        loss = model(**batch, **({"fused_lm_head": True} if fused else {})).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        tokens.append(n_tokens)
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    return {"tokens_per_s": sum(tokens[1:]) / sum(times[1:]), "timed_steps": steps,
            "step_s": times[1:], "peak_memory_mb": peak_rss_mb(),
            "memory_after_load_mb": loaded_rss, "trainable_params": trainable,
            "total_params": total}


class StepTimer:
    """A TrainerCallback-compatible timer of optimizer steps (the first is a warm-up)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, *a: Any, **k: Any) -> None:
        self._start = time.perf_counter()

    def on_step_end(self, *a: Any, **k: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


def _callback(timer: StepTimer) -> Any:
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            timer.on_step_begin()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            timer.on_step_end()

    return Timer()


def _step_tokens(args: argparse.Namespace, model_path: Path, steps: int) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = tokenize(tokenizer, load_pairs(args), args.max_length)
    return [n for _, n in batches(rows, args.batch_size, steps, tokenizer.pad_token_id)]


def arm_job(args: argparse.Namespace, model_path: Path) -> dict[str, Any]:
    from student.config import load_train_config
    from student.trainer import train

    timer = StepTimer()
    cfg = load_train_config(None, [
        f"model={model_path}", f"data.limit={args.examples}", "data.val_size=0",
        f"sft.max_steps={args.steps + 1}", f"sft.per_device_train_batch_size={args.batch_size}",
        "sft.gradient_accumulation_steps=1", f"sft.max_length={args.max_length}",
        "sft.save_strategy=no", "sft.train_sampling_strategy=sequential",
        "sft.dataloader_pin_memory=false", "early_stopping_patience=null",
        f"sft.gradient_checkpointing={str(args.gradient_checkpointing).lower()}"]
        + ([f"data_dir={args.data_dir}"] if args.data_dir else []))
    with tempfile.TemporaryDirectory() as tmp:
        run = train(cfg, Path(tmp) / "run", callbacks=[_callback(timer)])
        manifest = json.loads((run / "manifest.json").read_text())
    tokens = _step_tokens(args, model_path, args.steps + 1)
    return {"tokens_per_s": sum(tokens[1:]) / sum(timer.times[1:]), "timed_steps": args.steps,
            "step_s": timer.times[1:], "peak_memory_mb": peak_rss_mb(),
            "trainable_params": manifest["trainable_params"],
            "total_params": manifest["total_params"],
            "adapter_size_mb": manifest["adapter_size_mb"]}


def arm_trl_defaults(args: argparse.Namespace, model_path: Path) -> dict[str, Any]:
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from student.data import to_dataset

    timer = StepTimer()
    steps = args.trl_defaults_steps
    with tempfile.TemporaryDirectory() as tmp:
        # TRL's defaults, except what a benchmark must pin: steps, batch, order, no saving;
        # and use_cpu on a machine without CUDA (TRL's bf16 default requires it there).
        import torch

        sft = SFTConfig(output_dir=tmp, max_steps=steps + 1, report_to="none",
                        per_device_train_batch_size=args.batch_size, save_strategy="no",
                        max_length=args.max_length, train_sampling_strategy="sequential",
                        use_cpu=not torch.cuda.is_available())
        trainer = SFTTrainer(model=str(model_path), args=sft,
                             train_dataset=to_dataset(load_pairs(args)),
                             peft_config=LoraConfig(**lora_settings()),
                             callbacks=[_callback(timer)])
        trainer.train()
        settings = {"bf16": sft.bf16, "gradient_checkpointing": sft.gradient_checkpointing}
    tokens = _step_tokens(args, model_path, steps + 1)
    return {"tokens_per_s": sum(tokens[1:]) / sum(timer.times[1:]), "timed_steps": steps,
            "step_s": timer.times[1:], "peak_memory_mb": peak_rss_mb(), "settings": settings}


def run_arm(args: argparse.Namespace) -> dict[str, Any]:
    from teacher.core import models

    model_path = Path(models.resolve(args.model))
    if args.arm == "job":
        return arm_job(args, model_path)
    if args.arm == "plain":
        return arm_plain(args, model_path, lora=True)
    if args.arm == "plain_fused":
        return arm_plain(args, model_path, lora=True, fused=True)
    if args.arm == "full_ft":  # the full logits would add GBs that LoRA does not cause
        return arm_plain(args, model_path, lora=False, fused=True)
    return arm_trl_defaults(args, model_path)


# ---------------------------------------------------------------- driver


def model_size_mb(model_path: Path) -> float:
    return sum(p.stat().st_size for p in model_path.glob("*.safetensors")) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--examples", type=int, default=16, help="GSM8K train examples")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="timed steps (job, plain)")
    parser.add_argument("--trl-defaults-steps", type=int, default=1)
    parser.add_argument("--full-ft-steps", type=int, default=None,
                        help="default: --steps, so full fine-tuning sees the same batches")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="job, plain and full_ft arms recompute activations (less memory)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"subset of {ARMS}")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "student_throughput.json")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # one arm, in-process
    args = parser.parse_args()

    if args.arm:  # child process: one arm, JSON on the last stdout line
        print(json.dumps(run_arm(args)))
        return 0

    from teacher.core import models

    model_path = Path(models.resolve(args.model))
    results: dict[str, Any] = {}
    if args.out.is_file():  # keep the arms not re-run from an earlier run of the same setup
        old = json.loads(args.out.read_text())
        if (old.get("model_path"), old.get("examples"), old.get("batch_size"),
                old.get("max_length")) == (str(model_path), args.examples, args.batch_size,
                                           args.max_length):
            results.update(old.get("arms", {}))
    for arm in [a for a in args.arms.split(",") if a]:
        cmd = [sys.executable, __file__, "--arm", arm, "--model", str(model_path),
               "--examples", str(args.examples), "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--trl-defaults-steps", str(args.trl_defaults_steps),
               "--max-length", str(args.max_length)]
        if args.full_ft_steps is not None:
            cmd += ["--full-ft-steps", str(args.full_ft_steps)]
        if args.gradient_checkpointing:
            cmd.append("--gradient-checkpointing")
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        print(f"running {arm} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:  # report it and go on with the other arms
            print(proc.stderr[-3000:], file=sys.stderr)
            print(f"arm {arm} failed (exit {proc.returncode})", file=sys.stderr)
            continue
        results[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{arm}: {results[arm]['tokens_per_s']:.1f} tokens/s, peak "
              f"{results[arm]['peak_memory_mb']:.0f} MB", file=sys.stderr, flush=True)

    summary = summarize(results, model_path)
    report = {"model": args.model, "model_path": str(model_path), "examples": args.examples,
              "batch_size": args.batch_size, "max_length": args.max_length,
              "precision": "fp32", "device": "cpu",
              "gradient_checkpointing": args.gradient_checkpointing,
              "platform": platform.platform(),
              "processor": platform.processor(), "arms": results, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results, summary)
    print(f"wrote {args.out}")
    return 0


def summarize(results: dict[str, Any], model_path: Path) -> dict[str, Any]:
    s: dict[str, Any] = {"model_size_mb": round(model_size_mb(model_path), 1)}
    job, plain = results.get("job"), results.get("plain")
    if job and plain:
        s["job_vs_plain"] = round(job["tokens_per_s"] / plain["tokens_per_s"], 3)
        s["job_within_10pct_of_plain"] = s["job_vs_plain"] >= TARGET_JOB_VS_PLAIN
    if job and results.get("plain_fused"):
        s["job_vs_plain_fused"] = round(
            job["tokens_per_s"] / results["plain_fused"]["tokens_per_s"], 3)
    if results.get("trl_defaults") and plain:
        s["plain_vs_trl_defaults"] = round(
            plain["tokens_per_s"] / results["trl_defaults"]["tokens_per_s"], 2)
    lora = job or plain  # the job's LoRA is what the memory target is about
    if lora and results.get("full_ft"):
        s["lora_memory_arm"] = "job" if job else "plain"
        s["full_ft_vs_lora_peak_memory"] = round(
            results["full_ft"]["peak_memory_mb"] / lora["peak_memory_mb"], 2)
        s["memory_target_met"] = s["full_ft_vs_lora_peak_memory"] >= TARGET_MEMORY_RATIO
    if lora:
        s["trainable_share"] = lora["trainable_params"] / lora["total_params"]
    if job:
        s["adapter_size_mb"] = job["adapter_size_mb"]
        s["adapter_vs_model_size"] = round(job["adapter_size_mb"] / s["model_size_mb"], 4)
    return s


def print_table(results: dict[str, Any], summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="student training throughput (fp32, CPU)")
    for col in ("arm", "tokens/s", "mean step s", "peak memory MB"):
        table.add_column(col, justify="right" if col != "arm" else "left")
    for arm, r in results.items():
        steps = r["step_s"]
        table.add_row(arm, f"{r['tokens_per_s']:.1f}", f"{sum(steps) / len(steps):.2f}",
                      f"{r['peak_memory_mb']:.0f}")
    console = Console()
    console.print(table)
    for key, value in summary.items():
        console.print(f"{key}: {value}")


if __name__ == "__main__":
    sys.exit(main())
