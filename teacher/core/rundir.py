"""The student run directory: its layout, its writer's primitives and its reader.

``student`` writes a run directory through this module and ``eval`` reads it
through it, so the layout is defined once::

    manifest.json          resolved config, data fingerprint, versions, speed, memory;
                           ``completed: true`` only once everything below is written
    adapter/               the peft adapter (best checkpoint when evaluating)
    checkpoints/           Trainer checkpoints ``checkpoint-<step>/`` (resume, per-checkpoint eval)
    loss_history.json      {"train": [{step, epoch, loss}], "eval": [...]}
    loss_curve.png
    train_examples.jsonl   the exact training / validation pairs (:class:`TrainExample`)
    val_examples.jsonl
    merged/                the merged full model (``merge: true``)

Everything here fails with a :class:`RunDirError` that names the run directory
and the file (and line) at fault.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from teacher.core.templates import Messages

MANIFEST = "manifest.json"
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"
MERGED = "merged"
LOSS_HISTORY = "loss_history.json"
LOSS_CURVE = "loss_curve.png"
TRAIN_EXAMPLES = "train_examples.jsonl"
VAL_EXAMPLES = "val_examples.jsonl"
EXAMPLES = {"train": TRAIN_EXAMPLES, "val": VAL_EXAMPLES}
# The files of a peft adapter; their content is the adapter's identity (adapter_hash).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# The Trainer writes trainer_state.json last: a checkpoint without it was cut off mid-write.
CHECKPOINT_STATE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

Action = Literal["fresh", "resume", "done"]


class RunDirError(ValueError):
    """A run directory that does not follow the contract, or cannot be written as asked."""


@dataclass(frozen=True)
class TrainExample:
    """One training pair: a chat prompt and the response the student learns to produce."""

    id: str
    prompt: Messages
    response: str
    # Per-example difficulty recorded by the teacher's scorer (mean NLL), if any; not
    # written to the run directory.
    nll: float | None = None

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "prompt": self.prompt, "response": self.response},
                          ensure_ascii=False)


# ---------------------------------------------------------------- files


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def _write_text_atomic(path: Path, text: str) -> None:
    # A reader (or a resumed run) sees the old file or the new one, never half of one.
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    _write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The run's manifest, or None where the directory has none."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    return data


def write_examples(path: Path, examples: Sequence[TrainExample]) -> None:
    _write_text_atomic(path, "".join(ex.to_json() + "\n" for ex in examples))


def read_examples(path: Path) -> list[TrainExample]:
    """A ``*_examples.jsonl`` file; errors name file:line."""
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


def adapter_hash(adapter_dir: Path) -> str:
    """Content hash of a peft adapter (config + weights): the cache key of its results."""
    h = hashlib.sha256()
    for name in ADAPTER_FILES:
        h.update(name.encode())
        with (adapter_dir / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- checkpoints


def _checkpoints(run_dir: Path, *required: str) -> list[tuple[int, Path]]:
    """(step, dir) of the checkpoints holding every ``required`` file, by step."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir()
                  if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))
                  and all((p / f).is_file() for f in required))


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest *complete* checkpoint (the one a resume continues from)."""
    found = _checkpoints(run_dir, CHECKPOINT_STATE)
    return found[-1][1] if found else None


def _remove_partial_checkpoints(run_dir: Path) -> None:
    """Deletes the checkpoints cut off mid-write (a killed run's newest one)."""
    complete = {p for _, p in _checkpoints(run_dir, CHECKPOINT_STATE)}
    for _, partial in _checkpoints(run_dir):
        if partial not in complete:
            shutil.rmtree(partial)


# ---------------------------------------------------------------- the writer


# Data settings added after runs were made; at None they select what runs made before
# them did, so a run without them is the same run (and still resumes).
_ADDED_DATA_KEYS = ("sample_seed", "ids_file", "split_seed")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    # Where the data and run live may move between attempts; what is trained may not.
    out = {k: v for k, v in config.items() if k not in ("data_dir", "cache_dir")}
    if isinstance(out.get("data"), dict):
        out["data"] = {k: v for k, v in out["data"].items()
                       if not (k in _ADDED_DATA_KEYS and v is None)}
    return out


def check_run_dir(out: Path, config: dict[str, Any], data_fingerprint: str, *,
                  resume: bool, overwrite: bool) -> Action:
    """What to do with ``out``: "fresh", "resume" or "done" (read-only; every rank runs it).

    Refuses a directory holding another run unless ``overwrite``, and a resume whose
    config or data differ from the interrupted run's.
    """
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out}: exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return "fresh"
    manifest = read_manifest(out)
    if manifest is None:
        raise RunDirError(f"--out {out}: directory is not empty and holds no run ({MANIFEST} "
                          "missing); choose another directory")
    if overwrite:
        return "fresh"
    if not resume:
        state = "a completed run" if manifest.get("completed") else "an unfinished run"
        raise RunDirError(f"--out {out}: holds {state}; pass --overwrite to replace it"
                          + ("" if manifest.get("completed") else " or --resume to continue it"))
    if manifest.get("dataset_fingerprint") != data_fingerprint:
        raise RunDirError(f"--resume: the data differ from the run in {out} (fingerprint "
                          f"{manifest.get('dataset_fingerprint')} vs {data_fingerprint})")
    old = _comparable(manifest.get("config", {}))
    new = _comparable(config)
    if old != new:
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise RunDirError(f"--resume: the config differs from the run in {out} in {keys}")
    return "done" if manifest.get("completed") else "resume"


def start_run_dir(out: Path, action: Action, manifest: dict[str, Any],
                  train: Sequence[TrainExample], val: Sequence[TrainExample]) -> None:
    """Lays out a "fresh" run (its examples, then its unfinished manifest), or readies one
    to "resume" (its partial checkpoints removed). The main process only."""
    if action == "fresh" and out.exists():
        shutil.rmtree(out)  # --overwrite of a directory holding a run (check_run_dir allowed it)
    out.mkdir(parents=True, exist_ok=True)
    if action == "fresh":
        write_examples(out / TRAIN_EXAMPLES, train)
        write_examples(out / VAL_EXAMPLES, val)
        write_manifest(out, manifest)
    else:
        _remove_partial_checkpoints(out)


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Written first (``completed: false``) and last (``completed: true``) by the writer."""
    write_json_atomic(out / MANIFEST, manifest)


# ---------------------------------------------------------------- the reader


class RunDir:
    """A student run directory; only ``manifest.json`` is required to open one."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} does not exist")
        manifest = read_manifest(self.path)
        if manifest is None:
            raise RunDirError(
                f"{self.path} is not a student run directory: it has no {MANIFEST} "
                "(made by `distill-student train --out RUN_DIR`)"
            )
        self.manifest: dict[str, Any] = manifest

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def completed(self) -> bool:
        return bool(self.manifest.get("completed"))

    def adapter_dir(self, checkpoint: str | None = None) -> Path:
        """The final adapter, or a checkpoint's; checked for the peft files."""
        folder = self.path / ADAPTER if checkpoint is None else self.checkpoint_dir(checkpoint)
        missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
        if missing:
            raise RunDirError(
                f"{folder}: not a peft adapter (missing {', '.join(missing)})"
                + ("" if self.completed else f"; the run in {self.path} did not complete")
            )
        return folder

    def checkpoint_dir(self, name: str) -> Path:
        return self.path / CHECKPOINTS / name

    def checkpoints(self) -> list[tuple[int, str]]:
        """(step, name) of the checkpoints holding an adapter, by step."""
        return [(step, d.name) for step, d in _checkpoints(self.path, *ADAPTER_FILES)]

    def examples(self, split: str) -> list[TrainExample]:
        """``train_examples.jsonl`` / ``val_examples.jsonl``; errors name file:line."""
        if split not in EXAMPLES:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        path = self.path / EXAMPLES[split]
        if not path.is_file():
            raise RunDirError(f"{path} not found (the run directory lists its {split} examples)")
        return read_examples(path)

    def loss_history(self) -> dict[str, list[dict[str, Any]]]:
        path = self.path / LOSS_HISTORY
        if not path.is_file():
            raise RunDirError(f"{path} not found")
        data = _read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("train", []), list):
            raise RunDirError(f"{path}: expected {{'train': [...], 'eval': [...]}}")
        return {"train": data.get("train", []), "eval": data.get("eval", [])}
