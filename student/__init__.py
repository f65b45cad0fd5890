"""The student: LoRA fine-tuning on teacher records or ground truth (``student.train``)."""

from __future__ import annotations

from typing import Any


def train(config: Any, out_dir: Any, **kwargs: Any) -> Any:
    """``student.trainer.train``, imported lazily: it pulls in torch and TRL."""
    from student.trainer import train as _train

    return _train(config, out_dir, **kwargs)
