"""The on-policy distillation job's typed config (``distill-student on-policy --config X.yaml``).

Each optimizer step the current student samples ``samples_per_prompt`` completions of
task prompts, the teacher scores every sampled token over its ``Score`` API and the
student takes a policy-gradient step on the per-token reverse KL (``student.on_policy``).

``train`` passes through to ``transformers.TrainingArguments`` (learning rate, batch
size counted in prompts, steps, save steps, ...) and ``lora`` to peft's ``LoraConfig``,
merged key by key over the defaults below, as the SFT job's ``sft`` and ``lora`` do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from student.config import PRECISIONS, default_lora
from teacher.core.config import ConfigError, load_config
from teacher.core.models import DEFAULT_STUDENT, DEFAULT_TEACHER

SAMPLERS = ("in_process",)


def default_train() -> dict[str, Any]:
    return {
        "max_steps": 50,
        "per_device_train_batch_size": 2,  # prompts per micro-batch (x samples_per_prompt)
        "gradient_accumulation_steps": 1,
        "learning_rate": 1.0e-4,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 10,
        "report_to": "none",
    }


@dataclass
class PromptsConfig:
    """The task prompts the student samples on (``teacher.core.tasks``)."""

    task: str = "gsm8k"
    split: str = "train"
    limit: int | None = 64  # prompts drawn (None: the whole split)
    sample_seed: int = 0  # the draw's seed (teacher.core.tasks.draw): not the first N
    template: str | None = None  # a prompt template id or key; None: the task's default


@dataclass
class TeacherConfig:
    """The teacher that scores the student's tokens."""

    # HOST:PORT[,HOST:PORT] of a running teacher server; None: serve ``model`` in-process
    # on a real local gRPC server (teacher.serving.local.local_teacher).
    address: str | None = None
    model: str = DEFAULT_TEACHER  # the served model's name (address) or its source (local)
    engine: str = ""  # local only: "hf", "vllm" or "" (the default engine)
    timeout_s: float = 600.0
    token_file: str | None = None  # a bearer token for a remote server


@dataclass
class SamplingConfig:
    """How the student samples its completions."""

    samples_per_prompt: int = 4
    max_new_tokens: int = 256
    # 1.0 samples the policy the loss trains; other values make the samples off-policy.
    temperature: float = 1.0
    top_p: float = 1.0
    # Where the student samples: "in_process" (the training model and its current
    # adapter; student.rollout.InProcessSampler). A server sampler (the teacher server
    # hosting the student base + the adapter, LoadAdapter replace=True) plugs in at
    # student.rollout.Sampler.
    sampler: Literal["in_process"] = "in_process"


@dataclass
class OnPolicyConfig:
    """Everything ``student.on_policy.train_on_policy`` needs."""

    model: str = DEFAULT_STUDENT  # the student: catalogue name, local directory or hub id
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    data_dir: str | None = None  # benchmark data (default: teacher.core.tasks.default_data_dir())
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    lora: dict = field(default_factory=default_lora)
    train: dict = field(default_factory=default_train)

    def validate(self) -> None:
        """Value checks that YAML types cannot express; raises ConfigError naming the key."""
        s, p = self.sampling, self.prompts
        if s.samples_per_prompt < 1:
            raise ConfigError(f"sampling.samples_per_prompt: must be >= 1, "
                              f"got {s.samples_per_prompt}")
        if s.max_new_tokens < 1:
            raise ConfigError(f"sampling.max_new_tokens: must be >= 1, got {s.max_new_tokens}")
        if not s.temperature > 0:
            raise ConfigError(f"sampling.temperature: must be > 0, got {s.temperature}")
        if not 0 < s.top_p <= 1:
            raise ConfigError(f"sampling.top_p: must be in (0, 1], got {s.top_p}")
        if s.sampler not in SAMPLERS:
            raise ConfigError(f"sampling.sampler: {s.sampler!r} is not one of {SAMPLERS}")
        if p.limit is not None and p.limit <= 0:
            raise ConfigError(f"prompts.limit: must be > 0, got {p.limit}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: {self.precision!r} is not one of {PRECISIONS}")
        if not self.teacher.model:
            raise ConfigError("teacher.model: a teacher model is required")
        steps = self.train.get("max_steps")
        if not isinstance(steps, int) or steps < 1:
            # An epoch over prompts means nothing on-policy: the steps are the budget.
            raise ConfigError(f"train.max_steps: a number of steps >= 1 is required, got {steps}")
        for key in ("output_dir", "resume_from_checkpoint"):
            if key in self.train:
                raise ConfigError(f"train.{key}: set by the job (use --out / --resume)")


def load_on_policy_config(path: str | Path | None = None,
                          overrides: Sequence[str] = ()) -> OnPolicyConfig:
    """YAML + ``key=value`` overrides -> a checked OnPolicyConfig."""
    cfg = load_config(OnPolicyConfig, path, overrides)
    cfg.validate()
    return cfg
