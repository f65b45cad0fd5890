"""TRL's ``SFTConfig`` and peft's ``LoraConfig`` from the student config, for this device.

The config's ``sft`` and ``lora`` mappings pass through to those libraries; unknown
keys and bad values are reported under the config section that holds them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from student.config import TrainConfig
from student.data import StudentError
from teacher.core.config import did_you_mean
from teacher.core.rundir import CHECKPOINTS


def _build(cls: type, kwargs: dict[str, Any], section: str) -> Any:
    """``cls(**kwargs)`` with unknown keys and bad values reported under ``section``."""
    known = [f.name for f in dataclasses.fields(cls)]
    for key in kwargs:
        if key not in known:
            raise StudentError(f"unknown {section} key {section}.{key}{did_you_mean(key, known)}")
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
                                  or cfg.rationale_weight is not None or cfg.kd is not None):
        raise StudentError("sft.packing: cannot be combined with curriculum, token_mask_ppl, "
                           "rationale_weight or kd (they work per example)")
    return _build(SFTConfig, kwargs, "sft")


def lora_config(cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    return _build(LoraConfig, dict(cfg.lora), "lora")
