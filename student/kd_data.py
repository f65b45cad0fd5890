"""The teacher's top-k rows for offline KD: read, checked, aligned, batched.

The data job stores, beside each JSONL shard, the teacher's top-k next tokens for every
token of a record's chosen response (``teacher.core.topk``), the response tokenized as
the teacher's ``Score`` does (``PromptTokenizer.encode_completion``: the text alone,
without special tokens). Here they are

* read for the examples trained and validated on (:func:`load_teacher_topk`), refusing
  a missing row, rows of mixed k, duplicate ids in a row, and a teacher whose
  vocabulary is not the student's (an id past the student's vocabulary, or the vocabulary
  size the data job recorded in ``job.json``): cross-tokenizer KD is out of scope;
* aligned with TRL's tokenized rows (:func:`attach_topk`): the completion must start
  with exactly the tokens the teacher scored (same tokenizer, same text), row ``t``
  being the teacher's distribution for completion token ``t``; the chat template's
  end-of-turn tokens after the response have no row (CE only there);
* batched by :class:`KDCollator` into ``[batch, length - 1, k]`` tensors on the
  shifted positions the loss uses (``student/kd.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from student.data import StudentError
from teacher.core.records import output_shards
from teacher.core.rundir import TrainExample
from teacher.core.topk import TopK, TopKError, read_topk, side_path
from teacher.serving.tokenization import PromptTokenizer

COLUMNS = ("kd_start", "kd_ids", "kd_logprobs", "kd_tail")
JOB_FILE = "job.json"  # the data job's settings; its "top_k" section names the teacher


@dataclass
class TeacherTopK:
    """The rows of the examples a run uses, and where they came from."""

    rows: dict[str, TopK]
    k: int
    side_files: list[str]
    teacher: dict[str, Any] = field(default_factory=dict)  # job.json's "top_k", if any

    def fingerprint(self) -> str:
        """A hash of the rows used, by record id (resume must see the same teacher)."""
        h = hashlib.sha256()
        for rid in sorted(self.rows):
            top = self.rows[rid]
            h.update(rid.encode())
            for a in (top.token_ids, top.logprobs, top.tail_logprobs):
                h.update(a.tobytes())
        return h.hexdigest()[:16]

    def tokens(self) -> int:
        return sum(top.num_tokens for top in self.rows.values())


def student_vocab_size(model_path: str | Path) -> int:
    """The student's output vocabulary (its logits' width), from its config."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model_path).get_text_config().vocab_size)


def load_teacher_topk(data_path: str | Path, ids: Iterable[str], vocab_size: int) -> TeacherTopK:
    """The top-k rows of ``ids`` from the side files of a teacher output directory."""
    out = Path(data_path)
    wanted = set(ids)
    teacher = _job_top_k(out)
    rows: dict[str, TopK] = {}
    where: dict[str, Path] = {}
    files = []
    for shard in output_shards(out):
        side = side_path(shard)
        if not side.exists():
            continue  # a shard of only rejected records has no rows (checked per id below)
        files.append(str(side.absolute()))
        try:
            found = read_topk(side)
        except (TopKError, ValueError) as exc:
            raise StudentError(f"kd: {side}: unreadable top-k side file ({exc})") from exc
        for rid, top in found.items():
            if rid in wanted:
                rows[rid], where[rid] = top, side
    missing = sorted(wanted - set(rows))
    if missing:
        hint = ("no side files at all: make the data with the data job's top_k > 0"
                if not files else f"not in {len(files)} side file(s)")
        raise StudentError(f"kd: no teacher top-k rows for record {missing[0]!r} "
                           f"({len(missing)} of {len(wanted)} records; {hint})")
    for rid, top in rows.items():
        _check_rows(rid, where[rid], top, vocab_size)
    ks = {top.k for top in rows.values()}
    if len(ks) > 1:
        rid = next(r for r, top in rows.items() if top.k != min(ks))
        raise StudentError(f"kd: {where[rid]}: record {rid!r} has k={rows[rid].k}, others "
                           f"k={min(ks)}; one run needs one k")
    k = ks.pop()
    if teacher.get("k") not in (None, k):
        raise StudentError(f"kd: {out / JOB_FILE} says top_k k={teacher['k']}, the side files "
                           f"hold k={k}")
    teacher_vocab = teacher.get("vocab_size")
    if teacher_vocab is not None and int(teacher_vocab) != vocab_size:
        raise StudentError(
            f"kd: the teacher {teacher.get('model', '')!r} ({out / JOB_FILE}) has a vocabulary "
            f"of {teacher_vocab} tokens, the student of {vocab_size}; logit distillation "
            "needs one vocabulary (cross-tokenizer KD is not supported)")
    return TeacherTopK(rows, k, files, teacher)


def _job_top_k(out: Path) -> dict[str, Any]:
    path = out / JOB_FILE
    if not path.is_file():
        return {}
    try:
        section = json.loads(path.read_text()).get("top_k") or {}
    except (json.JSONDecodeError, AttributeError) as exc:
        raise StudentError(f"kd: {path}: unreadable job file ({exc})") from exc
    return dict(section) if isinstance(section, dict) else {}


def _check_rows(rid: str, side: Path, top: TopK, vocab_size: int) -> None:
    ids = top.token_ids
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids.max() if ids.max() >= vocab_size else ids.min())
        raise StudentError(
            f"kd: {side}: record {rid!r} has teacher token id {bad}, outside the student's "
            f"vocabulary of {vocab_size}: the teacher's vocabulary differs (cross-tokenizer "
            "KD is not supported)")
    ordered = np.sort(ids, axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        raise StudentError(f"kd: {side}: record {rid!r} repeats a token id within a top-k row")
    if not (np.isfinite(top.logprobs).all() and (top.logprobs <= 0).all()):
        raise StudentError(f"kd: {side}: record {rid!r} has top-k log-probs that are not "
                           "finite and <= 0")


# ---------------------------------------------------------------- alignment


def check_token_counts(topk: TeacherTopK, examples: Sequence[TrainExample],
                       tokenizer: Any) -> None:
    """Each response has as many tokens under the student's tokenizer as the teacher
    scored (before anything is written; :func:`attach_topk` then checks the ids)."""
    encode = PromptTokenizer(tokenizer).encode_completion
    for ex in examples:
        _check_count(ex.id, topk.rows[ex.id], len(encode(ex.response)))


def _check_count(rid: str, top: TopK, n: int) -> None:
    if n != top.num_tokens:
        raise StudentError(
            f"kd: record {rid!r}: the teacher scored {top.num_tokens} response tokens, the "
            f"student's tokenizer makes {n}: not the same tokenizer or text")


def attach_topk(dataset: Any, topk: TeacherTopK, examples: Sequence[TrainExample],
                tokenizer: Any) -> Any:
    """TRL's tokenized dataset (``id``, ``input_ids``, ``labels``) plus the teacher's rows
    for its completion tokens: ``kd_start`` (the input index of the first response
    token) and the rows, flat (``kd_ids`` / ``kd_logprobs``: tokens x k; ``kd_tail``)."""
    by_id = {ex.id: ex for ex in examples}
    encode = PromptTokenizer(tokenizer).encode_completion

    def add(row: dict[str, Any]) -> dict[str, Any]:
        rid = row["id"]
        top = topk.rows[rid]
        expected = encode(by_id[rid].response)
        _check_count(rid, top, len(expected))
        labels = row["labels"]
        start = next((t for t, label in enumerate(labels) if label != -100), len(labels))
        ids = row["input_ids"]
        n = min(top.num_tokens, len(ids) - start)  # max_length may have cut the completion
        got = list(ids[start:start + n])
        if got != expected[:n]:
            at = next(i for i, (a, b) in enumerate(zip(got, expected[:n], strict=True))
                      if a != b)
            raise StudentError(
                f"kd: record {rid!r}: the chat template tokenizes the response differently "
                f"from the teacher's Score (first difference at response token {at}), so the "
                "teacher's rows would not line up")
        return {"kd_start": start, "kd_ids": top.token_ids[:n].reshape(-1).tolist(),
                "kd_logprobs": top.logprobs[:n].reshape(-1).tolist(),
                "kd_tail": top.tail_logprobs[:n].tolist()}

    return dataset.map(add)


class KDCollator:
    """TRL's collator plus the teacher's rows on the shifted positions the loss uses.

    Shifted position ``u`` predicts input token ``u + 1``; the response token at input
    index ``kd_start + t`` gets row ``t`` at ``u = kd_start + t - 1``. Positions without a
    row get ids ``0..k-1`` (distinct, as the kernel needs) and ``kd_mask`` False.
    """

    def __init__(self, base: Any, k: int):
        self.base = base
        self.k = k

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if "kd_start" not in examples[0]:
            return self.base(examples)
        cols = [{c: ex.pop(c) for c in COLUMNS} for ex in examples]
        batch = self.base(examples)
        b, width = batch["input_ids"].shape
        k = self.k
        ids = torch.arange(k, dtype=torch.long).repeat(b, width - 1, 1)
        logprobs = torch.zeros((b, width - 1, k), dtype=torch.float32)
        tail = torch.zeros((b, width - 1), dtype=torch.float32)
        mask = torch.zeros((b, width - 1), dtype=torch.bool)
        for i, c in enumerate(cols):
            n = len(c["kd_tail"])
            lo = c["kd_start"] - 1
            n = min(n, width - 1 - lo)
            if n <= 0 or lo < 0:
                continue
            ids[i, lo:lo + n] = torch.tensor(c["kd_ids"][: n * k]).view(n, k)
            logprobs[i, lo:lo + n] = torch.tensor(c["kd_logprobs"][: n * k]).view(n, k)
            tail[i, lo:lo + n] = torch.tensor(c["kd_tail"][:n])
            mask[i, lo:lo + n] = True
        batch.update(kd_ids=ids, kd_logprobs=logprobs, kd_tail=tail, kd_mask=mask)
        return batch
