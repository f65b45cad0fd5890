"""Training data for the student: sources, the validation split, subsets, curriculum.

An example is a prompt (chat messages) and the response the student learns to
produce. It comes from a teacher output directory (``teacher.core.records``; the
field chosen by the config) or from a task's human ground truth
(``teacher.core.tasks``, the baseline arm). The validation split is made by example
id (a seeded hash), so no id is ever in both splits, whatever the subset size.
The examples become TRL's conversational prompt-completion format, so TRL
tokenizes them with the chat template and computes the loss on the completion
only.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from student.config import DataConfig
from teacher.core.records import RecordError, iter_record_lines, output_shards
from teacher.core.rundir import TrainExample
from teacher.core.tasks import draw, get_task


class StudentError(ValueError):
    """A problem with the job's input data; the message names what and where."""


# ---------------------------------------------------------------- sources


def load_examples(cfg: DataConfig, data_dir: str | Path | None = None) -> list[TrainExample]:
    """The examples of the configured source (before splitting), in source order."""
    examples = _from_teacher(cfg) if cfg.source == "teacher" else _from_ground_truth(cfg, data_dir)
    if cfg.ids_file is not None:
        keep = _read_ids(Path(cfg.ids_file))
        examples = [ex for ex in examples if ex.id in keep]
    if not examples:
        where = cfg.path if cfg.source == "teacher" else f"task {cfg.task!r} split {cfg.split!r}"
        raise StudentError(f"data: no training examples in {where}")
    return examples


def _from_ground_truth(cfg: DataConfig, data_dir: str | Path | None) -> list[TrainExample]:
    try:
        task = get_task(cfg.task)
        examples = task.load(cfg.split, data_dir, limit=cfg.limit, sample_seed=cfg.sample_seed)
    except ValueError as exc:
        raise StudentError(f"data.task: {exc}") from exc
    out = []
    for ex in examples:
        prompt = task.prompt(ex)
        if isinstance(prompt, str):  # a completion template (wikitext): not a chat task
            raise StudentError(f"data.task: {cfg.task!r} has no chat prompt to train on")
        out.append(TrainExample(ex.id, [dict(m) for m in prompt], task.reference_response(ex)))
    return out


def _from_teacher(cfg: DataConfig) -> list[TrainExample]:
    try:
        paths = output_shards(Path(cfg.path or ""))
    except FileNotFoundError as exc:
        raise StudentError(f"data.path: {exc}") from exc
    out: list[TrainExample] = []
    seen: dict[str, str] = {}
    rejected: set[str] = set()  # drawn over too, then dropped (see DataConfig.sample_seed)
    for path in paths:
        # The raw line too: data.field may name a field the Record does not declare.
        for where, data, record in iter_record_lines(path):
            if cfg.mode is not None and record.mode != cfg.mode:
                continue
            if record.status == "rejected" and not cfg.include_rejected:
                if cfg.sample_seed is not None and record.task == cfg.task:
                    rejected.add(record.id)
                continue
            if cfg.field not in data:
                raise RecordError(f"{where}: record has no field {cfg.field!r} (data.field)")
            response = data[cfg.field]
            if not isinstance(response, str) or not response.strip():
                raise RecordError(f"{where}: field {cfg.field!r} is empty or not a string")
            if record.task != cfg.task:
                raise RecordError(f"{where}: record of task {record.task!r}, but data.task "
                                  f"is {cfg.task!r}")
            if record.id in seen:
                raise RecordError(f"{where}: duplicate example id {record.id!r} (first at "
                                  f"{seen[record.id]}); set data.mode to pick one mode")
            seen[record.id] = where
            nll = record.response_nll if cfg.field == "response" else (
                record.reference_nll if cfg.field == "reference" else None)
            out.append(TrainExample(record.id, record.prompt, response, nll))
    # The job writes records as they finish; in the task's order (ids are zero-padded
    # indices), the same data give the same run and data.limit means the first N.
    out.sort(key=lambda ex: ex.id)
    if cfg.sample_seed is not None:
        drawn = set(draw(sorted({ex.id for ex in out} | rejected), cfg.limit, cfg.sample_seed,
                         id_of=str))
        return [ex for ex in out if ex.id in drawn]
    return out[: cfg.limit] if cfg.limit is not None else out


def _read_ids(path: Path) -> set[str]:
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudentError(f"data.ids_file: {path} not found") from None
    except json.JSONDecodeError as exc:
        raise StudentError(f"data.ids_file: {path}:{exc.lineno}: invalid JSON") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise StudentError(f"data.ids_file: {path}: not a JSON list of example ids")
    return set(ids)


# ---------------------------------------------------------------- split and subset


def _count(size: float, n: int, what: str) -> int:
    """A share (< 1, or <= 1 for subsets) or an absolute count -> a count out of n."""
    if size <= 1.0 and not (what == "val" and size == 1.0):
        return math.ceil(size * n) if size > 0 else 0
    return min(int(size), n)


def split_examples(examples: Sequence[TrainExample], val_size: float,
                   seed: int) -> tuple[list[TrainExample], list[TrainExample]]:
    """(train, val): the val ids are those with the smallest seeded hash.

    Hashing the id (not the position) keeps an example on the same side however
    the source is ordered or limited.
    """
    n_val = _count(val_size, len(examples), "val")
    if n_val >= len(examples):
        raise StudentError(f"data.val_size: {val_size} leaves no training examples out of "
                           f"{len(examples)}")

    def rank(ex: TrainExample) -> str:
        return hashlib.sha256(f"{seed}:{ex.id}".encode()).hexdigest()

    val_ids = {ex.id for ex in sorted(examples, key=rank)[:n_val]}
    train = [ex for ex in examples if ex.id not in val_ids]
    val = [ex for ex in examples if ex.id in val_ids]
    return train, val


def take_subset(train: Sequence[TrainExample], subset: float | None,
                seed: int) -> list[TrainExample]:
    """A seeded random subset (kept in source order), for saturation curves."""
    if subset is None:
        return list(train)
    n = _count(subset, len(train), "subset")
    if n == 0:
        raise StudentError(f"data.subset: {subset} selects no examples out of {len(train)}")
    keep = set(random.Random(seed).sample(range(len(train)), n))
    return [ex for i, ex in enumerate(train) if i in keep]


def fingerprint(train: Sequence[TrainExample], val: Sequence[TrainExample]) -> str:
    """A hash of the ids and texts of both splits (what the model saw and was judged on)."""
    h = hashlib.sha256()
    for name, split in (("train", train), ("val", val)):
        h.update(f"[{name}]\n".encode())
        for ex in split:
            h.update(ex.to_json().encode())
            h.update(b"\n")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- TRL's dataset format


def to_dataset(examples: Sequence[TrainExample]) -> Any:
    """A ``datasets.Dataset`` in TRL's conversational prompt-completion format.

    TRL renders ``prompt`` with the generation prompt and ``prompt + completion``
    with the chat template, and masks the prompt tokens out of the loss.
    """
    from datasets import Dataset

    return Dataset.from_list([
        {"id": ex.id, "prompt": ex.prompt,
         "completion": [{"role": "assistant", "content": ex.response}]}
        for ex in examples
    ])


# ---------------------------------------------------------------- curriculum


def easy_to_hard(ids: Sequence[str], nll: dict[str, float]) -> list[int]:
    """Indices of ``ids`` ordered by increasing NLL (ties keep source order)."""
    missing = [i for i in ids if i not in nll]
    if missing:
        raise StudentError(f"curriculum: no NLL for {len(missing)} example(s), e.g. {missing[0]}")
    return sorted(range(len(ids)), key=lambda k: (nll[ids[k]], k))


def answer_start(response: str) -> int:
    """Character offset where the final answer (the last non-empty line) starts."""
    stripped = response.rstrip()
    cut = stripped.rfind("\n")
    return cut + 1 if cut >= 0 else 0
