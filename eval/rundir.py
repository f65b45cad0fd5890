"""Reading a student run directory (the contract between ``student`` and ``eval``).

A run dir holds ``manifest.json``, ``adapter/`` (a peft adapter),
``checkpoints/checkpoint-*/``, ``loss_history.json``, ``train_examples.jsonl`` and
``val_examples.jsonl``. Everything here fails with a :class:`RunDirError` that
names the run directory and the file (and line) at fault.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class RunDirError(ValueError):
    """A run directory that does not follow the contract."""


@dataclass(frozen=True)
class TrainExample:
    id: str
    prompt: list[dict[str, str]]
    response: str


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


class RunDir:
    """A student run directory; only ``manifest.json`` is required to open one."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} does not exist")
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise RunDirError(
                f"{self.path} is not a student run directory: it has no {MANIFEST} "
                "(made by `distill-student train --out RUN_DIR`)"
            )
        data = _read_json(manifest)
        if not isinstance(data, dict):
            raise RunDirError(f"{manifest}: expected a JSON object")
        self.manifest: dict[str, Any] = data

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def completed(self) -> bool:
        return bool(self.manifest.get("completed"))

    def adapter_dir(self, checkpoint: str | None = None) -> Path:
        """The final adapter, or a checkpoint's; checked for the peft files."""
        folder = self.path / "adapter" if checkpoint is None else self.checkpoint_dir(checkpoint)
        missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
        if missing:
            raise RunDirError(
                f"{folder}: not a peft adapter (missing {', '.join(missing)})"
                + ("" if self.completed else f"; the run in {self.path} did not complete")
            )
        return folder

    def checkpoint_dir(self, name: str) -> Path:
        return self.path / "checkpoints" / name

    def checkpoints(self) -> list[tuple[int, str]]:
        """(step, name) of the checkpoints holding an adapter, by step."""
        root = self.path / "checkpoints"
        found = []
        for d in root.glob("checkpoint-*") if root.is_dir() else ():
            m = re.fullmatch(r"checkpoint-(\d+)", d.name)
            if m and all((d / f).is_file() for f in ADAPTER_FILES):
                found.append((int(m.group(1)), d.name))
        return sorted(found)

    def examples(self, split: str) -> list[TrainExample]:
        """``train_examples.jsonl`` / ``val_examples.jsonl``; errors name file:line."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        path = self.path / f"{split}_examples.jsonl"
        if not path.is_file():
            raise RunDirError(f"{path} not found (the run directory lists its {split} examples)")
        out = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RunDirError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                prompt, response = obj.get("prompt"), obj.get("response")
                if not isinstance(obj.get("id"), str):
                    raise RunDirError(f"{path}:{lineno}: field 'id' missing or not a string")
                if not (isinstance(prompt, list) and prompt and all(
                    isinstance(m, dict) and "role" in m and "content" in m for m in prompt
                )):
                    raise RunDirError(f"{path}:{lineno}: field 'prompt' must be chat messages")
                if not isinstance(response, str) or not response:
                    raise RunDirError(f"{path}:{lineno}: field 'response' missing or empty")
                out.append(TrainExample(obj["id"], prompt, response))
        return out

    def loss_history(self) -> dict[str, list[dict[str, Any]]]:
        path = self.path / "loss_history.json"
        if not path.is_file():
            raise RunDirError(f"{path} not found")
        data = _read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("train", []), list):
            raise RunDirError(f"{path}: expected {{'train': [...], 'eval': [...]}}")
        return {"train": data.get("train", []), "eval": data.get("eval", [])}


def adapter_hash(adapter_dir: Path) -> str:
    """Content hash of a peft adapter (config + weights): the cache key of its results."""
    h = hashlib.sha256()
    for name in ADAPTER_FILES:
        h.update(name.encode())
        with (adapter_dir / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]
