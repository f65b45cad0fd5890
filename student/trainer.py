"""The student training job, as a recipe: check -> setup -> train -> save -> cleanup.

``train(config, out_dir)`` loads the examples, splits them by id, lets TRL tokenize
them in its prompt-completion format (loss on the completion only), optionally
shapes the loss per token (Selective Token Masking, answer/rationale weights) and
orders them (curriculum), trains with checkpoints, and writes the run directory
that eval reads (its layout, writer and reader: ``teacher.core.rundir``).

Each stage is one method of :class:`StudentRun` (torchtune's recipe shape); the
pieces they use live one concept a module: ``student.data`` (examples),
``student.arguments`` (TRL / peft settings), ``student.sft_trainer`` (the trainer
class, collator, log line), ``student.shaping`` (STM, answer masks, curriculum),
``student.provenance`` (versions, commit, costs), ``student.loss_curve``.

Runs unchanged under ``accelerate launch`` (DDP, DeepSpeed, FSDP): every rank
prepares the same data; only the main process writes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from student.arguments import device_precision, lora_config, sft_arguments
from student.config import TrainConfig
from student.data import (
    StudentError,
    fingerprint,
    load_examples,
    split_examples,
    take_subset,
    to_dataset,
)
from student.kd_data import (
    TeacherTopK,
    check_token_counts,
    load_teacher_topk,
    student_vocab_size,
)
from student.loss_curve import LossHistory, loss_history, plot_loss_curve
from student.provenance import adapter_size_mb, git_commit, package_versions, peak_memory_mb
from student.sft_trainer import epoch_summary_class, student_trainer_class
from student.shaping import shape_trainer_data
from teacher.core import models
from teacher.core.config import to_dict
from teacher.core.rundir import (
    ADAPTER,
    CHECKPOINT_STATE,
    LOSS_CURVE,
    LOSS_HISTORY,
    MERGED,
    Action,
    check_run_dir,
    last_checkpoint,
    read_manifest,
    start_run_dir,
    write_json_atomic,
    write_manifest,
)

# read_manifest is re-exported: eval.experiment reads a run's state through the job.
__all__ = ["StudentRun", "read_manifest", "train"]


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False,
          overwrite: bool = False, callbacks: Sequence[Any] = ()) -> Path:
    """Train a LoRA student as configured; returns the run directory.

    ``resume`` continues an interrupted run in ``out_dir`` from its last complete
    checkpoint; ``overwrite`` replaces a run already there. ``callbacks`` are extra
    ``transformers.TrainerCallback`` objects.
    """
    run = StudentRun(config, out_dir)
    if run.check(resume=resume, overwrite=overwrite) == "done":
        print(f"{run.out} already holds this completed run; nothing to do", file=sys.stderr)
        return run.out
    run.setup(callbacks)
    session = run.train()
    run.save(session)
    run.cleanup()
    return run.out


def split_seed_of(config: TrainConfig) -> int:
    """The validation split's seed: data.split_seed, else the training seed."""
    return config.seed if config.data.split_seed is None else config.data.split_seed


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _trainer_state(checkpoint: Path | None) -> dict[str, Any]:
    if checkpoint is None:
        return {}
    return json.loads((checkpoint / CHECKPOINT_STATE).read_text())


def _tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@dataclass(frozen=True)
class Session:
    """What this process's ``trainer.train()`` did (a resumed run: only its own part)."""

    resumed_from: Path | None
    tokens_per_epoch: int
    epochs: float  # where training stands now, counting earlier sessions
    tokens: float  # tokens trained on in this session
    runtime_s: float  # training time of this session without the evaluations inside it
    trainable_params: int
    total_params: int


class StudentRun:
    """One run of the job; the stages run in order, each on every rank."""

    def __init__(self, config: TrainConfig, out_dir: str | Path):
        self.started = time.monotonic()
        config.validate()
        self.config = config
        self.out = Path(out_dir).expanduser().absolute()
        self.resolved = to_dict(config)

    # ------------------------------------------------------------ check (nothing written)

    def check(self, *, resume: bool, overwrite: bool) -> Action:
        """Model, data and what to do with the run directory; writes nothing."""
        cfg = self.config
        try:
            self.base_path = models.resolve(cfg.model)
        except (FileNotFoundError, ValueError) as exc:
            raise StudentError(f"model: {exc}") from exc
        examples = load_examples(cfg.data, cfg.data_dir)
        train_pool, self.val = split_examples(examples, cfg.data.val_size, split_seed_of(cfg))
        self.train_examples = take_subset(train_pool, cfg.data.subset, cfg.data.subset_seed)
        self.data_fingerprint = fingerprint(self.train_examples, self.val)
        self.topk: TeacherTopK | None = None
        if cfg.kd is not None:  # the teacher's rows, checked before anything is written
            self.vocab_size = student_vocab_size(self.base_path)
            used = [*self.train_examples, *self.val]
            self.topk = load_teacher_topk(cfg.data.path or "", [ex.id for ex in used],
                                          self.vocab_size)
            check_token_counts(self.topk, used, _tokenizer(self.base_path))
            # Other teacher rows make another run (resume refuses them).
            self.data_fingerprint = hashlib.sha256(
                f"{self.data_fingerprint}:{self.topk.fingerprint()}".encode()).hexdigest()[:16]
        self.action = check_run_dir(self.out, self.resolved, self.data_fingerprint,
                                    resume=resume, overwrite=overwrite)
        return self.action

    # ------------------------------------------------------------ setup

    def setup(self, callbacks: Sequence[Any] = ()) -> None:
        """Settings (checked before anything is written), the run directory, the trainer."""
        from accelerate import PartialState

        cfg = self.config
        self.device, self.precision = device_precision(cfg)
        self.args = sft_arguments(cfg, self.out, has_val=bool(self.val),
                                  precision=self.precision, device=self.device)
        peft_config = lora_config(cfg)
        _ = self.args.device  # the arguments set up the (possibly multi-process) state
        self.state = PartialState()
        self.manifest = self._start_manifest()
        self._start_run_dir()
        self.resume_from = last_checkpoint(self.out) if self.action == "resume" else None
        self.trainer = self._build_trainer(peft_config, callbacks)
        self._shape_data()

    def _start_manifest(self) -> dict[str, Any]:
        cfg = self.config
        data_info = {"kind": cfg.data.source, "task": cfg.data.task, "field": cfg.data.field}
        if cfg.data.source == "teacher":
            data_info.update(path=str(Path(cfg.data.path or "").absolute()), mode=cfg.data.mode)
        else:
            data_info["split"] = cfg.data.split
        return {
            "base_model": cfg.model,
            "base_model_path": str(self.base_path),
            "base_model_revision": models.revision_of(self.base_path),
            "data": data_info,
            "config": self.resolved,
            "dataset_fingerprint": self.data_fingerprint,
            "num_train_examples": len(self.train_examples),
            "num_val_examples": len(self.val),
            **({"kd": self._kd_manifest()} if self.topk is not None else {}),
            "seed": cfg.seed,
            "split_seed": split_seed_of(cfg),
            "sample_seed": cfg.data.sample_seed,
            "device": self.device,
            "precision": self.precision,
            "world_size": self.state.num_processes,
            "packages": package_versions(),
            "git_commit": git_commit(),
            "started_at": _now(),
            "completed": False,
        }

    def _kd_manifest(self) -> dict[str, Any]:
        """The KD settings and the teacher's rows the run trains on."""
        kd, topk = self.config.kd, self.topk
        assert kd is not None and topk is not None
        return {"weight": kd.weight, "temperature": kd.temperature, "tail": kd.tail,
                "k": topk.k, "side_files": topk.side_files,
                "topk_fingerprint": topk.fingerprint(), "teacher_tokens": topk.tokens(),
                "student_vocab_size": self.vocab_size,
                # the data job's record of the teacher (job.json "top_k"), when it has one
                "teacher": topk.teacher or None}

    def _start_run_dir(self) -> None:
        if self.state.is_main_process:
            start_run_dir(self.out, self.action, self.manifest, self.train_examples, self.val)
            if self.action == "resume":
                done = last_checkpoint(self.out)
                print(f"resuming {self.out} from {done or 'the start (no checkpoint yet)'}",
                      file=sys.stderr, flush=True)
        self.state.wait_for_everyone()

    def _build_trainer(self, peft_config: Any, callbacks: Sequence[Any]) -> Any:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback

        cfg = self.config
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(self.base_path)
        model = AutoModelForCausalLM.from_pretrained(self.base_path, dtype=dtype)
        extra = [epoch_summary_class()()]
        if self.val and cfg.early_stopping_patience:
            extra.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
        return student_trainer_class()(
            model=model,
            args=self.args,
            train_dataset=to_dataset(self.train_examples),
            eval_dataset=to_dataset(self.val) if self.val else None,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[*extra, *callbacks],
            rationale_weight=cfg.rationale_weight,
            kd=cfg.kd,
        )

    def _shape_data(self) -> None:
        cfg = self.config
        shaping = shape_trainer_data(
            self.trainer, cfg, train=self.train_examples, val=self.val,
            cache_dir=Path(cfg.cache_dir).expanduser() if cfg.cache_dir else self.out,
            revision=self.manifest["base_model_revision"] or str(self.base_path),
            topk=self.topk)
        if shaping:
            self.manifest["shaping"] = shaping
            if "stm" in shaping and self.state.is_main_process:
                stm = shaping["stm"]
                print(f"STM: masked {stm['masked_tokens']} of {stm['target_tokens']} target "
                      f"tokens (perplexity > {stm['threshold']})", file=sys.stderr, flush=True)

    # ------------------------------------------------------------ train

    def train(self) -> Session:
        """Trains (from the last complete checkpoint when resuming) and times it."""
        import torch

        trainer, checkpoint = self.trainer, self.resume_from
        tokens_per_epoch = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        trainable, total = trainer.model.get_nb_trainable_parameters()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = _trainer_state(checkpoint)
        epoch_before = float(before.get("epoch") or 0.0)
        step_before = int(before.get("global_step") or 0)
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        eval_time = sum(float(e.get("eval_runtime", 0.0)) for e in trainer.state.log_history
                        if "eval_runtime" in e and int(e.get("step") or 0) > step_before)
        epochs = float(trainer.state.epoch or 0.0)
        return Session(
            resumed_from=checkpoint, tokens_per_epoch=tokens_per_epoch, epochs=epochs,
            tokens=tokens_per_epoch * max(epochs - epoch_before, 0.0),
            runtime_s=max(float(result.metrics.get("train_runtime", 0.0)) - eval_time, 0.0),
            trainable_params=int(trainable), total_params=int(total))

    # ------------------------------------------------------------ save

    def save(self, session: Session) -> None:
        """The adapter (every rank takes part), then on the main process the merged
        model, the loss history and curve, and last the completed manifest."""
        cfg, out, trainer = self.config, self.out, self.trainer
        trainer.save_model(str(out / ADAPTER))
        self.state.wait_for_everyone()
        if not self.state.is_main_process:
            return
        if cfg.merge:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(out / MERGED, safe_serialization=True)
            trainer.processing_class.save_pretrained(out / MERGED)
        history = loss_history(trainer.state.log_history)
        write_json_atomic(out / LOSS_HISTORY, history)
        plot_loss_curve(history, out / LOSS_CURVE,
                        f"{cfg.model} on {cfg.data.source} ({cfg.data.task})")
        self.manifest.update(self._finish_manifest(session, history))
        write_manifest(out, self.manifest)  # last: marks the run complete
        print(f"run complete: {out} (step {trainer.state.global_step}, "
              f"{self.manifest['tokens_per_s']} tokens/s)", file=sys.stderr, flush=True)

    def _finish_manifest(self, session: Session, history: LossHistory) -> dict[str, Any]:
        state, out = self.trainer.state, self.out
        best = state.best_model_checkpoint
        trainable, total = session.trainable_params, session.total_params
        return {
            "resumed_from": str(session.resumed_from) if session.resumed_from else None,
            "global_step": state.global_step,
            "epochs": round(session.epochs, 4),
            "best_checkpoint": str(Path(best).relative_to(out)) if best else None,
            "best_val_loss": state.best_metric,
            "final_train_loss": history["train"][-1]["loss"] if history["train"] else None,
            "final_val_loss": history["eval"][-1]["loss"] if history["eval"] else None,
            "train_tokens": round(session.tokens_per_epoch * session.epochs),
            "train_runtime_s": round(session.runtime_s, 2),
            "tokens_per_s": (round(session.tokens / session.runtime_s, 1)
                             if session.runtime_s else None),
            "wall_time_s": round(time.monotonic() - self.started, 2),
            "peak_memory_mb": peak_memory_mb(self.device),
            "trainable_params": trainable,
            "total_params": total,
            "trainable_share": trainable / total if total else math.nan,
            "adapter_size_mb": adapter_size_mb(out / ADAPTER),
            # which kernel computed the loss's output projection (student/frozen_head.py,
            # student/kd.py)
            "lm_head_loss": "topk_kd" if self.config.kd is not None else (
                "frozen_head" if self.trainer.frozen_head_kernel else "trl_fused"),
            "finished_at": _now(),
            "completed": True,
        }

    # ------------------------------------------------------------ cleanup

    def cleanup(self) -> None:
        """Every rank leaves together, once the main process has written the run."""
        self.state.wait_for_everyone()
