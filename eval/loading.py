"""Loading the model under evaluation: a base model, optionally with a LoRA adapter.

The adapter is merged into the base weights with peft (``merge_and_unload``) and
saved to a temporary directory, which any teacher engine (transformers or vLLM)
then serves like a plain checkpoint; the model is driven through
:class:`teacher.serving.service.TeacherService` in-process, so generation and scoring are
batched exactly as the teacher batches them. Before merging, every LoRA weight is
checked against the base model's module of the same name, so an adapter trained on
another model fails with a message saying which module and shape do not fit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from teacher.serving.engine import EngineSettings

log = logging.getLogger(__name__)

MODEL_NAME = "subject"  # the name the model is hosted under in the in-process service
_LORA_KEY = ".lora_"


class AdapterMismatchError(ValueError):
    """A peft adapter that does not fit the base model."""


def eval_engine() -> EngineSettings:
    """How the model is served unless the suite's ``engine`` section says otherwise."""
    return EngineSettings(name="hf", dtype="float32", max_batch_size=16)  # bf16 is emulated on CPU


def check_adapter_fits(model: Any, adapter_dir: Path, base_name: str = "") -> None:
    """Raise AdapterMismatchError unless every LoRA weight in ``adapter_dir`` has a
    matching module (and in/out features) in ``model``."""
    from safetensors import safe_open

    config_path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterMismatchError(f"{config_path}: cannot read the adapter config ({e})") from e
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterMismatchError(
            f"{config_path}: peft_type {config.get('peft_type')!r}; "
            "only LoRA adapters are supported"
        )
    modules = dict(model.named_modules())
    where = f"base model {base_name or getattr(model.config, '_name_or_path', '')!r}"
    problems: list[str] = []
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        if not any(_LORA_KEY in k for k in keys):
            raise AdapterMismatchError(f"{adapter_dir}: the adapter holds no LoRA weights")
        for key in keys:
            if _LORA_KEY not in key:
                continue
            module_path, _, kind = key.partition(_LORA_KEY)
            name = module_path.removeprefix("base_model.model.")
            module = modules.get(name)
            if module is None:
                problems.append(f"module {name!r} does not exist")
                continue
            shape = tuple(f.get_slice(key).get_shape())
            in_f = getattr(module, "in_features", None)
            out_f = getattr(module, "out_features", None)
            if kind.startswith("A") and in_f is not None and shape[-1] != in_f:
                problems.append(f"{name}: lora_A expects {shape[-1]} inputs, the module has {in_f}")
            if kind.startswith("B") and out_f is not None and shape[0] != out_f:
                problems.append(f"{name}: lora_B gives {shape[0]} outputs, the module has {out_f}")
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        shown = "; ".join(problems[:3]) + more
        trained_on = config.get("base_model_name_or_path") or "unknown"
        raise AdapterMismatchError(
            f"adapter {adapter_dir} does not fit the {where} "
            f"(the adapter was trained on {trained_on!r}): {shown}"
        )


def lora_rank(adapter_dir: Path) -> int:
    """The largest LoRA rank of a peft adapter (its ``r`` and any ``rank_pattern``), what
    an engine serving it at run time must allow (``EngineSettings.max_lora_rank``)."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return max([int(config.get("r") or 0), *map(int, (config.get("rank_pattern") or {}).values())])


def merge_adapter(base_path: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Base + LoRA adapter merged into a plain checkpoint in ``out_dir``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
    check_adapter_fits(model, adapter_dir, str(base_path))
    try:
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as e:  # what the shape check cannot see
        raise AdapterMismatchError(
            f"adapter {adapter_dir} does not fit base model {base_path}: {e}"
        ) from e
    merged.save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(str(base_path)).save_pretrained(str(out_dir))
    return out_dir


@contextlib.asynccontextmanager
async def serve(
    base_path: Path, adapter_dir: Path | None, engine: EngineSettings
) -> AsyncIterator[Any]:
    """A started TeacherService hosting the model (merged when an adapter is given)."""
    from teacher.serving.server import ModelSpec, build_service
    from teacher.serving.service import Limits

    with contextlib.ExitStack() as stack:
        path = base_path
        if adapter_dir is not None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="distill-merged-")))
            log.info("merging adapter %s into %s", adapter_dir, base_path)
            path = merge_adapter(base_path, adapter_dir, tmp)
        limits = Limits(max_queue=1 << 20, max_queue_tokens=0, max_batch_prompts=1 << 16,
                        max_score_items=1 << 16)
        service = build_service([ModelSpec(MODEL_NAME, str(path))], engine, limits)
        await service.start()
        try:
            yield service
        finally:
            await service.shutdown()
