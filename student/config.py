"""The student training job's typed config (``distill-student train --config X.yaml``).

TRL's ``SFTConfig`` settings (``sft``) and peft's ``LoraConfig`` settings (``lora``)
pass through as plain mappings, merged key by key over the defaults below, so every
option those libraries have is available without being re-declared here. The
defaults follow the small-data fine-tuning advice: LoRA r 16 / alpha 32 / dropout
0.05 on the attention projections (0.34% of Qwen2.5-Coder-0.5B's parameters,
measured; ``lora.target_modules=all-linear`` adds the MLPs: 1.38%, more capacity
and more forgetting), warmup, weight decay 0.01, gradient clipping 1.0, small batches with
gradient accumulation, evaluation each epoch, early stopping on validation loss
(patience 2) and the best checkpoint loaded at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from teacher.core.config import ConfigError, load_config
from teacher.core.models import DEFAULT_STUDENT

SOURCES = ("ground_truth", "teacher")
CURRICULA = ("none", "easy_to_hard")
PRECISIONS = ("auto", "fp32", "bf16")
KD_TAILS = ("bucket", "renormalize", "zero")


def default_lora() -> dict[str, Any]:
    return {
        "r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        # Attention projections (the names Qwen2, Llama and Mistral use): under 1% of
        # the weights; models naming them otherwise need lora.target_modules.
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }


def default_sft() -> dict[str, Any]:
    return {
        "num_train_epochs": 3,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "gradient_accumulation_steps": 4,
        "learning_rate": 2.0e-4,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,  # below 1: a fraction of the training steps
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "max_length": 1024,
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "logging_steps": 1,
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "report_to": "none",
    }


@dataclass
class DataConfig:
    """Where the training pairs come from and how they are split."""

    source: Literal["ground_truth", "teacher"] = "ground_truth"
    task: str = "gsm8k"  # the task registry name (ground truth; checked against records)
    split: str = "train"  # the task split (ground truth)
    path: str | None = None  # a teacher output directory (source: teacher)
    # The record field the student trains on: "response" (the chosen one),
    # "reference" (the human ground truth as recorded), or another field name.
    field: str = "response"
    mode: str | None = None  # only records of this teacher mode (trace, rewrite, ...)
    include_rejected: bool = False  # records the teacher rejected have no response
    limit: int | None = None  # the first N examples of the source
    # None: ``limit`` means the first N; a seed: N drawn with it (teacher.core.tasks.draw;
    # from a teacher directory, drawn over all its records, rejected ones included, so
    # every arm of one seed draws the same questions).
    sample_seed: int | None = None
    # A JSON list of example ids: only these are trained and validated on (an
    # experiment's questions every arm could produce, eval.experiment).
    ids_file: str | None = None
    val_size: float = 0.1  # held-out share (< 1) or count (>= 1) of examples, by id
    # The validation split's seed; None: the training seed (so a new seed also moves
    # examples between the splits). Fix it to vary only LoRA init and data order.
    split_seed: int | None = None
    subset: float | None = None  # the share (<= 1) or count (> 1) of the rest to train on
    subset_seed: int = 0


@dataclass
class KDConfig:
    """Offline logit distillation on the teacher's top-k (``student/kd.py``).

    Per labelled token, loss = (1 - weight) * CE + weight * temperature^2 * KL(teacher
    top-k || student), averaged over the labelled tokens (the KL is 0 where the teacher
    gave no distribution: the chat template's end-of-turn tokens). The teacher's rows
    come from the side files beside the data's shards (``teacher.core.topk``).
    """

    weight: float = 0.5
    # Softens both distributions; != 1 only with tail "renormalize", the one form whose
    # tempered teacher the top-k determines (the tail's tempered mass is unknown).
    temperature: float = 1.0
    # The mass outside the teacher's k tokens:
    # - "bucket": one (k+1)-th class, teacher tail vs the student's mass off those ids
    #   (TRL's server distillation loss_add_tail, DistillKit's symmetric_uniform): a
    #   true KL, 0 only when the student matches the teacher on the ids and the rest;
    # - "renormalize": both distributions renormalized over the k ids (TRL with
    #   loss_add_tail=False): the shape of the top-k only;
    # - "zero": the k terms only, the student normalized over the whole vocabulary
    #   (DistillKit's default, missing_probability_handling=zero).
    tail: Literal["bucket", "renormalize", "zero"] = "bucket"


@dataclass
class TrainConfig:
    """Everything ``student.train`` needs; ``to_dict(cfg)`` is the resolved config."""

    model: str = DEFAULT_STUDENT  # catalogue name, local directory or hub id
    data: DataConfig = field(default_factory=DataConfig)
    data_dir: str | None = None  # benchmark data (default: teacher.core.tasks.default_data_dir())
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    early_stopping_patience: int | None = 2  # evaluations without improvement; None: off
    # Order training examples easy to hard by per-example NLL (the teacher's scorer NLL
    # from the records, else computed once with the base model and cached).
    curriculum: Literal["none", "easy_to_hard"] = "none"
    # Selective Token Masking: drop from the loss the target tokens whose perplexity
    # exp(-logprob) under the base model exceeds this threshold (e.g. 2.5).
    token_mask_ppl: float | None = None
    # Distilling step-by-step: loss = w * answer + (1 - w) * rationale, the answer being
    # the response's last line (GSM8K's "#### N"). None: one plain token-mean loss.
    rationale_weight: float | None = None
    # Offline logit KD on the teacher's top-k side files (data.source teacher); None: SFT.
    kd: KDConfig | None = None
    merge: bool = False  # also save the merged full model in RUN_DIR/merged
    cache_dir: str | None = None  # STM / NLL caches (default: the run directory)
    lora: dict = field(default_factory=default_lora)
    sft: dict = field(default_factory=default_sft)

    def validate(self) -> None:
        """Value checks that YAML types cannot express; raises ConfigError naming the key."""
        d = self.data
        if d.source not in SOURCES:
            raise ConfigError(f"data.source: {d.source!r} is not one of {SOURCES}")
        if d.source == "teacher" and not d.path:
            raise ConfigError("data.path: a teacher output directory is required "
                              "when data.source is 'teacher'")
        if d.val_size < 0:
            raise ConfigError(f"data.val_size: must be >= 0, got {d.val_size}")
        if d.subset is not None and d.subset <= 0:
            raise ConfigError(f"data.subset: must be > 0, got {d.subset}")
        if d.limit is not None and d.limit <= 0:
            raise ConfigError(f"data.limit: must be > 0, got {d.limit}")
        if self.curriculum not in CURRICULA:
            raise ConfigError(f"curriculum: {self.curriculum!r} is not one of {CURRICULA}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: {self.precision!r} is not one of {PRECISIONS}")
        if self.token_mask_ppl is not None and self.token_mask_ppl <= 1.0:
            raise ConfigError(f"token_mask_ppl: a perplexity threshold must be > 1, "
                              f"got {self.token_mask_ppl}")
        if self.rationale_weight is not None and not 0.0 <= self.rationale_weight <= 1.0:
            raise ConfigError(f"rationale_weight: must be in [0, 1], got {self.rationale_weight}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigError("early_stopping_patience: must be >= 1 (or null to turn it off)")
        if self.kd is not None:
            self._validate_kd(self.kd)
        for key in ("output_dir", "resume_from_checkpoint"):
            if key in self.sft:
                raise ConfigError(f"sft.{key}: set by the job (use --out / --resume)")

    def _validate_kd(self, kd: KDConfig) -> None:
        if not 0.0 <= kd.weight <= 1.0:
            raise ConfigError(f"kd.weight: must be in [0, 1], got {kd.weight}")
        if kd.tail not in KD_TAILS:
            raise ConfigError(f"kd.tail: {kd.tail!r} is not one of {KD_TAILS}")
        if not kd.temperature > 0:
            raise ConfigError(f"kd.temperature: must be > 0, got {kd.temperature}")
        if kd.temperature != 1.0 and kd.tail != "renormalize":
            raise ConfigError(
                f"kd.temperature: {kd.temperature} needs kd.tail 'renormalize': the side file "
                "holds the teacher at temperature 1, and only over its top-k ids does that "
                "determine the tempered teacher")
        if self.data.source != "teacher" or self.data.field != "response":
            raise ConfigError("kd: needs data.source 'teacher' and data.field 'response' "
                              "(the side files hold the teacher's distributions over the "
                              "records' chosen responses)")
        if self.rationale_weight is not None:
            raise ConfigError("kd: cannot be combined with rationale_weight (both define the "
                              "per-token loss)")


def load_train_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """YAML + ``key=value`` overrides -> a checked TrainConfig."""
    cfg = load_config(TrainConfig, path, overrides)
    cfg.validate()
    return cfg
