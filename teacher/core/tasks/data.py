"""Where benchmark data comes from, and the checks that make a bad file fail clearly.

Owns the data-directory rule (``$DISTILL_DATA_DIR``, else ``../shared/data``, else the
Hugging Face hub), the hub loader, and the local readers: JSONL and BIG-Bench-Hard
style JSON are checked line by line first, so an error names ``<path>:<line>:``
instead of datasets' anonymous parser error. ``datasets`` is imported on first use
only: callers that need prompts or answer extraction do not pay for pyarrow/pandas.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "DISTILL_DATA_DIR"

PathLike = str | os.PathLike[str]


class DataFormatError(ValueError):
    """A data file is malformed; the message starts with ``<path>:<line>:``."""


# --------------------------------------------------------------------------------------
# Data directory


def _repo_root() -> Path:
    # teacher/core/tasks/data.py -> the repository root, three folders up.
    return Path(__file__).resolve().parents[3]


def default_data_dir() -> Path | None:
    """Where benchmark data lives: ``$DISTILL_DATA_DIR``, else ``../shared/data``.

    ``../shared/data`` is tried relative to the repository root, then to the current
    directory, and used if it exists. ``None`` means "no local data: use the hub".
    A set ``$DISTILL_DATA_DIR`` is returned even if missing, so that a typo fails
    loudly at load time instead of silently falling back to the network.
    """
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    for base in (_repo_root(), Path.cwd()):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate.resolve()
    return None


def resolve_data_dir(data_dir: PathLike | None) -> Path | None:
    """The local data root to read, or None for the hub; raises if it is missing."""
    if data_dir is not None:
        root, origin = Path(data_dir).expanduser(), "data_dir"
    else:
        root = default_data_dir()
        if root is None:
            return None
        origin = f"${DATA_DIR_ENV}" if os.environ.get(DATA_DIR_ENV, "").strip() else "default"
    if not root.is_dir():
        raise FileNotFoundError(
            f"data directory not found: {root} (from {origin}); pass data_dir=, set "
            f"${DATA_DIR_ENV}, or unset it to use ../shared/data or the Hugging Face hub"
        )
    return root


# --------------------------------------------------------------------------------------
# Readers


def _datasets() -> Any:
    # Imported lazily: `datasets` pulls in pyarrow/pandas, which callers that only
    # need prompts or answer extraction should not pay for.
    import datasets

    return datasets


def load_hub(task: str, split: str, path: str, name: str | None) -> list[dict[str, Any]]:
    """The rows of hub dataset ``path`` (config ``name``), split ``split``."""
    try:
        ds = _datasets().load_dataset(path, name, split=split)
    except Exception as e:  # network, auth, missing config: all mean "no data"
        raise RuntimeError(
            f"could not load {task} split {split!r} from the Hugging Face hub "
            f"({path}, {name}): {e}. No local data directory was found: pass data_dir= "
            f"or set ${DATA_DIR_ENV}"
        ) from e
    return ds.to_list()


def read_text_document(location: str) -> str:
    """A whole text file (a local path or a URL) as one string, read with datasets."""
    ds = _datasets().load_dataset("text", data_files=location, sample_by="document", split="train")
    return ds[0]["text"] if len(ds) else ""


def _json_error(path: Path, lineno: int, error: json.JSONDecodeError) -> DataFormatError:
    return DataFormatError(f"{path}:{lineno}: invalid JSON ({error.msg} at column {error.colno})")


def _validate_jsonl(path: Path, required: Sequence[str]) -> int:
    """Check every line of a JSONL file; returns the number of records.

    datasets' own errors on a bad line name neither the file nor the line, so the
    file is parsed here first (cheap: GSM8K is 4 MB) and problems reported as
    ``<path>:<line>: ...``. Blank lines are skipped, as datasets' reader does.
    """
    count = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise _json_error(path, lineno, e) from None
            if not isinstance(obj, dict):
                raise DataFormatError(
                    f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}"
                )
            for key in required:
                if not isinstance(obj.get(key), str):
                    raise DataFormatError(f"{path}:{lineno}: field {key!r} missing or not a string")
            count += 1
    if count == 0:
        raise DataFormatError(f"{path}: no records")
    return count


def load_jsonl(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    """The records of a local JSONL file whose records all have string ``required``
    fields, in file order."""
    expected = _validate_jsonl(path, required)
    rows = _datasets().load_dataset("json", data_files=str(path), split="train").to_list()
    if len(rows) != expected:  # a parser disagreement would shift every id after it
        raise DataFormatError(f"{path}: read {len(rows)} records, expected {expected}")
    return rows


def load_json_examples(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    """The ``"examples"`` list of a BIG-Bench-Hard style file, one JSON object
    ``{"canary": ..., "examples": [...]}``; checked here so errors name the file and
    line, then read with datasets."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise _json_error(path, e.lineno, e) from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list) or not examples:
        raise DataFormatError(f"{path}:1: expected an object with a non-empty 'examples' list")
    for i, ex in enumerate(examples):
        if not (isinstance(ex, dict) and all(isinstance(ex.get(k), str) for k in required)):
            fields = " and ".join(repr(key) for key in required)
            raise DataFormatError(f"{path}: examples[{i}] needs string fields {fields}")
    ds = _datasets().load_dataset("json", data_files=str(path), field="examples", split="train")
    rows = ds.to_list()
    if len(rows) != len(examples):
        raise DataFormatError(f"{path}: read {len(rows)} examples, expected {len(examples)}")
    return rows
