"""The student training job: TRL ``SFTTrainer`` + peft LoRA, writing a run directory.

``train(config, out_dir)`` loads the examples, splits them by id, lets TRL tokenize
them in its prompt-completion format (loss on the completion only), optionally
shapes the loss per token (Selective Token Masking, answer/rationale weights) and
orders them (curriculum), trains with checkpoints, and writes the run directory
that eval reads:

    manifest.json          resolved config, data fingerprint, versions, speed, memory;
                           ``completed: true`` only once everything below is written
    adapter/               the peft adapter (best checkpoint when evaluating)
    checkpoints/           Trainer checkpoints (resume, per-checkpoint eval)
    loss_history.json      {"train": [{step, epoch, loss}], "eval": [...]}
    loss_curve.png
    train_examples.jsonl   the exact training / validation pairs
    val_examples.jsonl
    merged/                the merged full model (``merge: true``)

Runs unchanged under ``accelerate launch`` (DDP, DeepSpeed, FSDP): every rank
prepares the same data; only the main process writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from student import masking
from student.config import TrainConfig
from student.data import (
    StudentError,
    TrainExample,
    answer_start,
    easy_to_hard,
    fingerprint,
    load_examples,
    split_examples,
    take_subset,
    to_dataset,
    write_examples,
)
from teacher.core import models
from teacher.core.config import to_dict

MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
MERGED = "merged"
LOSS_HISTORY = "loss_history.json"
LOSS_CURVE = "loss_curve.png"
TRAIN_EXAMPLES = "train_examples.jsonl"
VAL_EXAMPLES = "val_examples.jsonl"
SCORES_CACHE = "base_logprobs-{key}.json"  # keyed by base model + token ids
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "distill")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


# ---------------------------------------------------------------- the run directory


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise StudentError(f"{path}: not valid JSON ({exc})") from exc


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest *complete* checkpoint: the Trainer writes trainer_state.json last."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))
             and (p / "trainer_state.json").is_file()]
    return max(found)[1] if found else None


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    # Where the data and run live may move between attempts; what is trained may not.
    return {k: v for k, v in config.items() if k not in ("data_dir", "cache_dir")}


def check_run_dir(out: Path, config: dict[str, Any], data_fingerprint: str, *,
                  resume: bool, overwrite: bool) -> str:
    """What to do with ``out``: "fresh", "resume" or "done" (read-only; every rank runs it).

    Refuses a directory holding another run unless ``overwrite``, and a resume whose
    config or data differ from the interrupted run's.
    """
    if resume and overwrite:
        raise StudentError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise StudentError(f"--out {out}: exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return "fresh"
    manifest = read_manifest(out)
    if manifest is None:
        raise StudentError(f"--out {out}: directory is not empty and holds no run ({MANIFEST} "
                           "missing); choose another directory")
    if overwrite:
        return "fresh"
    if not resume:
        state = "a completed run" if manifest.get("completed") else "an unfinished run"
        raise StudentError(f"--out {out}: holds {state}; pass --overwrite to replace it"
                           + ("" if manifest.get("completed") else " or --resume to continue it"))
    if manifest.get("dataset_fingerprint") != data_fingerprint:
        raise StudentError(f"--resume: the data differ from the run in {out} (fingerprint "
                           f"{manifest.get('dataset_fingerprint')} vs {data_fingerprint})")
    old = _comparable(manifest.get("config", {}))
    new = _comparable(config)
    if old != new:
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise StudentError(f"--resume: the config differs from the run in {out} in {keys}")
    return "done" if manifest.get("completed") else "resume"


# ---------------------------------------------------------------- library settings


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _build(cls: type, kwargs: dict[str, Any], section: str) -> Any:
    """``cls(**kwargs)`` with unknown keys and bad values reported under ``section``."""
    known = [f.name for f in dataclasses.fields(cls)]
    for key in kwargs:
        if key not in known:
            raise StudentError(f"unknown {section} key {section}.{key}{_did_you_mean(key, known)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise StudentError(f"{section}: {exc}") from exc


def device_precision(cfg: TrainConfig) -> tuple[str, str]:
    """(device, precision): bf16 on CUDA, fp32 on CPU unless the config says otherwise."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.precision != "auto":
        return device, cfg.precision
    return device, ("bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32")


def sft_arguments(cfg: TrainConfig, out: Path, *, has_val: bool, precision: str,
                  device: str = "cpu") -> Any:
    from trl import SFTConfig

    # TRL defaults to bf16 and gradient checkpointing everywhere: 55x slower on this CPU
    # without native bf16 (the 0.5B, benchmarks/student_throughput.py). Both follow the
    # device; the config's sft mapping may override. Checkpointing stays on for CUDA (memory
    # is what a GPU lacks) and is off on CPU, where it costs 15-28% of the speed.
    kwargs: dict[str, Any] = {"bf16": precision == "bf16", "fp16": False,
                              "gradient_checkpointing": device == "cuda",
                              # every LoRA parameter takes part in each forward
                              "ddp_find_unused_parameters": False}
    if device == "cpu":
        # Also lets a torchrun / accelerate multi-process launch without GPUs form a gloo
        # process group (otherwise each process would train alone).
        kwargs["use_cpu"] = True
    # YAML 1.1 reads a bare `no` as false: `eval_strategy: no` means the strategy "no".
    kwargs.update({k: "no" if k.endswith("_strategy") and v is False else v
                   for k, v in cfg.sft.items()})
    kwargs.update(output_dir=str(out / CHECKPOINTS), seed=cfg.seed)
    if not has_val:  # nothing to evaluate on: no evaluation, no best-model selection
        kwargs.update(eval_strategy="no", load_best_model_at_end=False)
    if cfg.curriculum != "none":
        kwargs["train_sampling_strategy"] = "sequential"  # keep the curriculum's order
    if kwargs.get("packing") and (cfg.curriculum != "none" or cfg.token_mask_ppl is not None
                                  or cfg.rationale_weight is not None):
        raise StudentError("sft.packing: cannot be combined with curriculum, token_mask_ppl "
                           "or rationale_weight (they work per example)")
    return _build(SFTConfig, kwargs, "sft")


def lora_config(cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    return _build(LoraConfig, dict(cfg.lora), "lora")


# ---------------------------------------------------------------- the trainer


def _student_trainer_class() -> type:
    """SFTTrainer plus the answer/rationale-weighted loss (imported lazily: TRL is heavy)."""
    from trl import SFTTrainer

    from student.frozen_head import use_frozen_head

    class StudentTrainer(SFTTrainer):
        """``rationale_weight`` w: loss = w * mean NLL(answer) + (1 - w) * mean NLL(rationale)."""

        def __init__(self, *args: Any, rationale_weight: float | None = None, **kwargs: Any):
            self.rationale_weight = rationale_weight
            super().__init__(*args, **kwargs)
            # TRL patched the model for fused_lm_head=True; off GPU, with the head frozen,
            # our kernel does that job with one matmul less and only labelled tokens.
            self.frozen_head_kernel = use_frozen_head(
                self.model.get_base_model() if hasattr(self.model, "get_base_model")
                else self.model)
            if rationale_weight is not None:
                # Our loss is a per-micro-batch mean: let the Trainer divide it by the
                # accumulation steps, as for a loss not normalised by num_items_in_batch.
                self.loss_is_scaled_for_ga = False

        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            if self.rationale_weight is not None and "answer_mask" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "answer_mask"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.rationale_weight is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            answer = inputs.pop("answer_mask")[:, 1:].bool()
            inputs["use_cache"] = False
            outputs = model(**inputs, fused_lm_head=True)
            nll = -outputs.log_probs  # (batch, seq - 1), zero where the label is -100
            on_answer = outputs.label_mask & answer
            on_rationale = outputs.label_mask & ~answer
            w = self.rationale_weight
            loss = (w * nll[on_answer].sum() / on_answer.sum().clamp(min=1)
                    + (1 - w) * nll[on_rationale].sum() / on_rationale.sum().clamp(min=1))
            return (loss, outputs) if return_outputs else loss

    return StudentTrainer


class AnswerMaskCollator:
    """TRL's collator plus the per-token ``answer_mask`` column, padded with 0."""

    def __init__(self, base: Any):
        self.base = base

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        masks = [ex.pop("answer_mask") for ex in examples] if "answer_mask" in examples[0] else None
        batch = self.base(examples)
        if masks is not None:
            width = batch["input_ids"].shape[1]
            padded = torch.zeros((len(masks), width), dtype=torch.long)
            for i, m in enumerate(masks):
                padded[i, : len(m)] = torch.tensor(m[:width])
            batch["answer_mask"] = padded
        return batch


def _epoch_summary_class() -> type:
    from transformers import TrainerCallback

    class EpochSummary(TrainerCallback):
        """One line per evaluation: train loss (mean since the last), val loss, their gap."""

        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not state.is_world_process_zero or not metrics or "eval_loss" not in metrics:
                return
            val = float(metrics["eval_loss"])
            if self.losses:
                train = sum(self.losses) / len(self.losses)
                line = (f"train loss {train:.4f} | val loss {val:.4f} | "
                        f"gap (val - train) {val - train:+.4f}")
            else:
                line = f"val loss {val:.4f}"
            self.losses = []
            print(f"[epoch {state.epoch:.2f} | step {state.global_step}] {line}",
                  file=sys.stderr, flush=True)

    return EpochSummary


# ---------------------------------------------------------------- per-token shaping


def shape_dataset(dataset: Any, *, cfg: TrainConfig, examples: Sequence[TrainExample],
                  tokenizer: Any, scores: list[list[float]] | None,
                  with_answer_mask: bool) -> tuple[Any, dict[str, Any]]:
    """Answer masks, STM and curriculum order on a TRL-prepared dataset (has id/labels)."""
    stats: dict[str, Any] = {}
    by_id = {ex.id: ex for ex in examples}
    columns = dataset.column_names
    if with_answer_mask:
        def add_answer_mask(row: dict[str, Any]) -> dict[str, Any]:
            positions = masking.target_positions(row["labels"])
            completion = [row["input_ids"][t] for t in positions]
            response = by_id[row["id"]].response
            flags = masking.answer_mask(completion, response, answer_start(response),
                                        tokenizer.decode)
            mask = [0] * len(row["input_ids"])
            for t, flag in zip(positions, flags, strict=True):
                mask[t] = flag
            return {"answer_mask": mask}

        dataset = dataset.map(add_answer_mask)
    if cfg.token_mask_ppl is not None:
        assert scores is not None
        threshold = cfg.token_mask_ppl
        before = sum(len(masking.target_positions(lbl)) for lbl in dataset["labels"])
        dataset = dataset.map(
            lambda row, idx: {"labels": masking.mask_high_perplexity(row["labels"], scores[idx],
                                                                     threshold)},
            with_indices=True)
        after = sum(len(masking.target_positions(lbl)) for lbl in dataset["labels"])
        stats["stm"] = {"threshold": threshold, "target_tokens": before,
                        "masked_tokens": before - after,
                        "masked_share": round((before - after) / max(before, 1), 4)}
    if cfg.curriculum == "easy_to_hard":
        ids = dataset["id"]
        recorded = {i: by_id[i].nll for i in ids if by_id[i].nll is not None}
        if len(recorded) == len(ids):
            nll, source = recorded, "teacher records"
        else:
            assert scores is not None
            nll = {i: masking.mean_nll(s) for i, s in zip(ids, scores, strict=True)}
            source = "base model"
        order = easy_to_hard(ids, nll)
        dataset = dataset.select(order)
        stats["curriculum"] = {"order": "easy_to_hard", "nll_source": source,
                               "first": ids[order[0]], "last": ids[order[-1]]}
    assert "id" in columns
    return dataset, stats


def base_model_scores(trainer: Any, dataset: Any, *, cache_dir: Path, revision: str,
                      batch_size: int) -> list[list[float]]:
    """Per-target-token logprobs of the dataset under the base model, computed once."""
    from accelerate import PartialState

    rows = dataset.select_columns(["id", "input_ids", "labels"]).to_list()
    key = masking.sequence_key(revision, rows)
    cache_file = cache_dir / SCORES_CACHE.format(key=key)
    model = trainer.model
    pad_id = trainer.processing_class.pad_token_id

    def compute() -> list[list[float]]:
        print(f"scoring {len(rows)} training examples with the base model (cached in "
              f"{cache_file})", file=sys.stderr, flush=True)
        # The LoRA B matrices start at zero, but say what we mean: the base model.
        with model.disable_adapter():
            return masking.score_targets(model, rows, pad_id, batch_size)

    with PartialState().main_process_first():  # the main process fills the cache
        return masking.cached_scores(cache_file, key, compute)


# ---------------------------------------------------------------- provenance


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out["python"] = sys.version.split()[0]
    return out


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    # ru_maxrss is in KiB on Linux: the process's peak resident memory.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def dir_size_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 3)


def loss_history(log_history: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    history: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    for entry in log_history:
        for key, split in (("loss", "train"), ("eval_loss", "eval")):
            if key in entry:
                history[split].append({"step": entry.get("step"), "epoch": entry.get("epoch"),
                                       "loss": entry[key]})
    return history


def plot_loss_curve(history: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for split, style in (("train", "-"), ("eval", "o-")):
        points = history[split]
        if points:
            ax.plot([p["step"] for p in points], [p["loss"] for p in points], style,
                    label="validation" if split == "eval" else split)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (completion tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- the job


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False,
          overwrite: bool = False, callbacks: Sequence[Any] = ()) -> Path:
    """Train a LoRA student as configured; returns the run directory.

    ``resume`` continues an interrupted run in ``out_dir`` from its last complete
    checkpoint; ``overwrite`` replaces a run already there. ``callbacks`` are extra
    ``transformers.TrainerCallback`` objects.
    """
    started = time.monotonic()
    config.validate()
    out = Path(out_dir).expanduser().absolute()
    resolved = to_dict(config)

    # Inputs first: nothing is written before the config, model and data are known good.
    try:
        base_path = models.resolve(config.model)
    except (FileNotFoundError, ValueError) as exc:
        raise StudentError(f"model: {exc}") from exc
    examples = load_examples(config.data, config.data_dir)
    train_pool, val = split_examples(examples, config.data.val_size, config.seed)
    train_examples = take_subset(train_pool, config.data.subset, config.data.subset_seed)
    data_fp = fingerprint(train_examples, val)
    action = check_run_dir(out, resolved, data_fp, resume=resume, overwrite=overwrite)
    if action == "done":
        print(f"{out} already holds this completed run; nothing to do", file=sys.stderr)
        return out

    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback

    device, precision = device_precision(config)
    args = sft_arguments(config, out, has_val=bool(val), precision=precision, device=device)
    peft_config = lora_config(config)
    _ = args.device  # the arguments set up the (possibly multi-process) state
    state = PartialState()

    data_info = {"kind": config.data.source, "task": config.data.task,
                 "field": config.data.field}
    if config.data.source == "teacher":
        data_info.update(path=str(Path(config.data.path or "").absolute()),
                         mode=config.data.mode)
    else:
        data_info["split"] = config.data.split
    manifest: dict[str, Any] = {
        "base_model": config.model,
        "base_model_path": str(base_path),
        "base_model_revision": models.revision_of(base_path),
        "data": data_info,
        "config": resolved,
        "dataset_fingerprint": data_fp,
        "num_train_examples": len(train_examples),
        "num_val_examples": len(val),
        "seed": config.seed,
        "device": device,
        "precision": precision,
        "world_size": state.num_processes,
        "packages": package_versions(),
        "git_commit": git_commit(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "completed": False,
    }
    if state.is_main_process:
        if action == "fresh" and out.exists():
            shutil.rmtree(out)  # --overwrite of a directory holding a run (checked above)
        out.mkdir(parents=True, exist_ok=True)
        if action == "fresh":
            write_examples(out / TRAIN_EXAMPLES, train_examples)
            write_examples(out / VAL_EXAMPLES, val)
            write_json_atomic(out / MANIFEST, manifest)
        else:  # checkpoints newer than the last complete one were cut off mid-write
            done = last_checkpoint(out)
            for partial in (out / CHECKPOINTS).glob("checkpoint-*"):
                if _CHECKPOINT_RE.match(partial.name) and not (
                        partial / "trainer_state.json").is_file():
                    shutil.rmtree(partial)
            print(f"resuming {out} from {done or 'the start (no checkpoint yet)'}",
                  file=sys.stderr, flush=True)
    state.wait_for_everyone()
    checkpoint = last_checkpoint(out) if action == "resume" else None

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    trainer_cls = _student_trainer_class()
    extra = [_epoch_summary_class()()]
    if val and config.early_stopping_patience:
        extra.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=to_dataset(train_examples),
        eval_dataset=to_dataset(val) if val else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[*extra, *callbacks],
        rationale_weight=config.rationale_weight,
    )

    scores = None
    if config.token_mask_ppl is not None or (
            config.curriculum == "easy_to_hard"
            and any(ex.nll is None for ex in train_examples)):
        cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else out
        scores = base_model_scores(
            trainer, trainer.train_dataset, cache_dir=cache_dir,
            revision=manifest["base_model_revision"] or str(base_path),
            batch_size=int(args.per_device_eval_batch_size))
    with_answer_mask = config.rationale_weight is not None
    trainer.train_dataset, shaping = shape_dataset(
        trainer.train_dataset, cfg=config, examples=train_examples, tokenizer=tokenizer,
        scores=scores, with_answer_mask=with_answer_mask)
    if with_answer_mask:
        if trainer.eval_dataset is not None:
            trainer.eval_dataset, _ = shape_dataset(
                trainer.eval_dataset, cfg=dataclasses.replace(
                    config, token_mask_ppl=None, curriculum="none"),
                examples=val, tokenizer=tokenizer, scores=None, with_answer_mask=True)
        trainer.data_collator = AnswerMaskCollator(trainer.data_collator)
    if shaping:
        manifest["shaping"] = shaping
        if "stm" in shaping and state.is_main_process:
            stm = shaping["stm"]
            print(f"STM: masked {stm['masked_tokens']} of {stm['target_tokens']} target tokens "
                  f"(perplexity > {stm['threshold']})", file=sys.stderr, flush=True)

    tokens_per_epoch = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    trainable, total = trainer.model.get_nb_trainable_parameters()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    epoch_before = 0.0
    if checkpoint is not None:
        epoch_before = float(json.loads((checkpoint / "trainer_state.json").read_text())
                             .get("epoch") or 0.0)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    # Training time of this session without the evaluations inside it.
    step_before = int(json.loads((checkpoint / "trainer_state.json").read_text())
                      .get("global_step") or 0) if checkpoint is not None else 0
    eval_time = sum(float(e.get("eval_runtime", 0.0)) for e in trainer.state.log_history
                    if "eval_runtime" in e and int(e.get("step") or 0) > step_before)
    train_runtime = max(float(result.metrics.get("train_runtime", 0.0)) - eval_time, 0.0)
    epochs_done = float(trainer.state.epoch or 0.0)
    session_tokens = tokens_per_epoch * max(epochs_done - epoch_before, 0.0)

    trainer.save_model(str(out / ADAPTER))
    state.wait_for_everyone()
    if state.is_main_process:
        if config.merge:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(out / MERGED, safe_serialization=True)
            tokenizer.save_pretrained(out / MERGED)
        history = loss_history(trainer.state.log_history)
        write_json_atomic(out / LOSS_HISTORY, history)
        plot_loss_curve(history, out / LOSS_CURVE,
                        f"{config.model} on {config.data.source} ({config.data.task})")
        best = trainer.state.best_model_checkpoint
        manifest.update({
            "resumed_from": str(checkpoint) if checkpoint else None,
            "global_step": trainer.state.global_step,
            "epochs": round(epochs_done, 4),
            "best_checkpoint": str(Path(best).relative_to(out)) if best else None,
            "best_val_loss": trainer.state.best_metric,
            "final_train_loss": history["train"][-1]["loss"] if history["train"] else None,
            "final_val_loss": history["eval"][-1]["loss"] if history["eval"] else None,
            "train_tokens": round(tokens_per_epoch * epochs_done),
            "train_runtime_s": round(train_runtime, 2),
            "tokens_per_s": round(session_tokens / train_runtime, 1) if train_runtime else None,
            "wall_time_s": round(time.monotonic() - started, 2),
            "peak_memory_mb": peak_memory_mb(device),
            "trainable_params": int(trainable),
            "total_params": int(total),
            "trainable_share": trainable / total if total else math.nan,
            "adapter_size_mb": dir_size_mb_weights(out / ADAPTER),
            # which kernel computed the loss's output projection (student/frozen_head.py)
            "lm_head_loss": "frozen_head" if trainer.frozen_head_kernel else "trl_fused",
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "completed": True,
        })
        write_json_atomic(out / MANIFEST, manifest)  # last: marks the run complete
        print(f"run complete: {out} (step {trainer.state.global_step}, "
              f"{manifest['tokens_per_s']} tokens/s)", file=sys.stderr, flush=True)
    state.wait_for_everyone()
    return out


def dir_size_mb_weights(adapter: Path) -> float:
    """Size of the adapter weights (what is shipped), in MiB."""
    weights = list(adapter.glob("adapter_model.*"))
    return dir_size_mb(adapter) if not weights else round(
        sum(p.stat().st_size for p in weights) / 2**20, 3)
