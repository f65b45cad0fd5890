"""The distillation record: one line of a teacher output directory (JSONL shards).

A record is what the teacher produced for one task example: every candidate it
considered, which response was chosen and why, and where it came from. The
student trains on ``prompt`` -> ``response``; eval reads the same fields to
measure memorization. Shards are plain JSONL, so
``datasets.load_dataset("json", data_files=f"{out}/*.jsonl")`` reads them as is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEMA = "distill.record/v1"
# The distillation modes (teacher.distill.modes' registry, which this layer may not
# import; tests/teacher/test_modes.py keeps the two and the wire enum equal) and
# "ground_truth", a record of the reference itself.
MODES = ("trace", "rewrite", "best_of_n", "ground_truth")
Status = Literal["accepted", "fell_back", "rejected"]


class RecordError(ValueError):
    """A malformed record; the message starts with ``file:line:``."""


# Candidate attributes stored under another key (on disk and on the wire); the
# key "nll" predates the name that says it is a sum.
CANDIDATE_KEYS = {"nll_sum": "nll"}


@dataclass
class Candidate:
    text: str
    answer: str | None = None  # the extracted final answer
    correct: bool | None = None
    nll_sum: float | None = None  # NLL summed over the tokens under the scorer (key "nll")
    num_tokens: int | None = None
    perplexity: float | None = None
    frac_above_threshold: float | None = None
    rejected_because: str = ""  # e.g. "wrong answer", "template leak"


@dataclass
class Record:
    id: str  # the task example id, e.g. "gsm8k/train/000123"
    task: str
    split: str
    mode: str  # one of MODES
    prompt: list[dict[str, str]]  # the student's training prompt (chat messages)
    question: str
    reference: str  # the human ground-truth response
    target: str  # the final answer
    response: str  # what the student trains on (chosen candidate or the reference)
    status: Status  # accepted | fell_back (to the reference) | rejected (no response)
    reason: str = ""  # why this response was chosen
    chosen_index: int | None = None  # index into candidates, None for the reference
    candidates: list[Candidate] = field(default_factory=list)
    # Scorer statistics of the chosen response and of the reference: mean NLL per
    # token (*_nll) and token counts.
    response_nll: float | None = None
    response_tokens: int | None = None
    reference_nll: float | None = None
    reference_tokens: int | None = None
    # exp(mean NLL), and the share of tokens whose perplexity exceeds the threshold
    # recorded in provenance["ppl_threshold"].
    response_perplexity: float | None = None
    response_frac_above_threshold: float | None = None
    reference_perplexity: float | None = None
    reference_frac_above_threshold: float | None = None
    # Set by deduplication (teacher.distill.dedup): the id of the record this one repeats;
    # such a record is marked "rejected" so nothing trains on it twice.
    duplicate_of: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA

    def to_json(self) -> str:
        data = asdict(self)
        data["candidates"] = [
            {CANDIDATE_KEYS.get(k, k): v for k, v in c.items()} for c in data["candidates"]
        ]
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> Record:
        prefix = f"{where}: " if where else ""
        missing = [name for name in REQUIRED if name not in data]
        if missing:
            raise RecordError(f"{prefix}record misses field(s) {missing}")
        if data.get("schema", SCHEMA) != SCHEMA:
            raise RecordError(f"{prefix}unknown schema {data.get('schema')!r}, expected {SCHEMA}")
        if data["mode"] not in MODES:
            raise RecordError(f"{prefix}unknown mode {data['mode']!r}; one of {MODES}")
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        attribute = {key: name for name, key in CANDIDATE_KEYS.items()}
        kwargs["candidates"] = [Candidate(**{attribute.get(k, k): v for k, v in c.items()})
                                for c in data.get("candidates", [])]
        return cls(**kwargs)


REQUIRED = ("id", "task", "split", "mode", "prompt", "reference", "response", "status")


def iter_json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``file:line``, object) for each non-blank line; malformed lines raise with both."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(data, dict):
                raise RecordError(f"{where}: expected a JSON object")
            yield where, data


def iter_record_lines(path: Path) -> Iterator[tuple[str, dict[str, Any], Record]]:
    """(``file:line``, the line's object, its Record) for each record of one JSONL shard.

    The object keeps the fields a Record does not declare (the student may train on one).
    """
    for where, data in iter_json_lines(path):
        yield where, data, Record.from_dict(data, where)


def iter_records(path: Path) -> Iterator[Record]:
    """Records of one JSONL shard; a malformed line raises with file and line number."""
    for _, _, record in iter_record_lines(path):
        yield record


def shard_paths(out_dir: Path) -> list[Path]:
    return sorted(Path(out_dir).glob("*.jsonl"))


def output_shards(out_dir: Path) -> list[Path]:
    """The shards of a teacher output directory that must hold records, in shard order."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"teacher output directory {out_dir} does not exist")
    paths = shard_paths(out_dir)
    if not paths:
        raise FileNotFoundError(f"no *.jsonl shards in {out_dir}")
    return paths


def read_records(out_dir: Path) -> list[Record]:
    """Every record of a teacher output directory, in shard order."""
    return [record for path in output_shards(out_dir) for record in iter_records(path)]
