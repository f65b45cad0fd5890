"""Exact and near-duplicate removal for distillation records.

Two records are duplicates when their question and response say the same thing.
Text that comes from a prompt template (its fixed instructions, "### Response:"
headers a rewrite may echo) is cut out first, so responses that share only
template boilerplate are not merged. Exact duplicates compare the normalised
text; near duplicates are found with MinHash LSH (``datasketch``) over word
shingles and confirmed by the estimated Jaccard similarity.

Records are visited in id order and the first of a group is kept, so the result
does not depend on the order in which a job happened to finish them. A duplicate
is not deleted (every id stays in the output exactly once): it is marked
``status="rejected"`` with ``duplicate_of`` and a reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from datasketch import MinHash, MinHashLSH

from teacher.core.records import Record, iter_records, shard_paths
from teacher.core.templates import Template, get_template, list_templates

DEFAULT_THRESHOLD = 0.85
DEFAULT_NUM_PERM = 128
DEFAULT_SHINGLE = 3  # words per shingle
_MIN_LITERAL_CHARS = 8  # shorter template fragments ("\nA:") are too common to cut
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Duplicate:
    id: str
    duplicate_of: str
    kind: str  # "exact" or "near"
    similarity: float


def template_literals(templates: Iterable[Template]) -> list[str]:
    """The fixed text of templates (everything but their ``{fields}``), line by line,
    longest first so that a longer fragment is cut before its substrings."""
    pieces: set[str] = set()
    for tpl in templates:
        for parts in (tpl.text, tpl.system or ""):
            for literal, _, _, _ in string.Formatter().parse(parts):
                for line in literal.splitlines():
                    line = line.strip()
                    if len(line) >= _MIN_LITERAL_CHARS:
                        pieces.add(line)
    return sorted(pieces, key=len, reverse=True)


def strip_literals(text: str, literals: Sequence[str]) -> str:
    lowered = text.lower()
    for literal in literals:
        needle = literal.lower()
        if needle in lowered:
            text = re.sub(re.escape(literal), " ", text, flags=re.IGNORECASE)
            lowered = text.lower()
    return text


def dedup_text(record: Record, literals: Sequence[str]) -> str:
    """What identifies a record's content: question + response, template text cut out,
    lower-cased, punctuation and spacing normalised."""
    text = strip_literals(f"{record.question}\n{record.response}", literals)
    return " ".join(_WORD.findall(text.lower()))


def _minhash(words: list[str], shingle: int, num_perm: int) -> MinHash:
    m = MinHash(num_perm=num_perm, seed=1)
    if len(words) < shingle:
        shingles = [" ".join(words)]
    else:
        shingles = [" ".join(words[i : i + shingle]) for i in range(len(words) - shingle + 1)]
    for s in shingles:
        m.update(s.encode("utf-8"))
    return m


def find_duplicates(
    records: Iterable[Record],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    num_perm: int = DEFAULT_NUM_PERM,
    shingle: int = DEFAULT_SHINGLE,
    templates: Iterable[Template] | None = None,
) -> dict[str, Duplicate]:
    """Duplicates among ``records`` (by id), each pointing at the kept record.

    ``templates`` whose text is excluded default to every registered template.
    Records without a response (rejected for other reasons) are neither kept nor
    marked; a record already marked as a duplicate is judged afresh, so running
    this twice gives the same answer.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"near-duplicate threshold {threshold} outside (0, 1]")
    literals = template_literals(list_templates() if templates is None else templates)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes: dict[str, MinHash] = {}
    exact: dict[str, str] = {}
    found: dict[str, Duplicate] = {}
    for record in sorted(records, key=lambda r: r.id):
        if not record.response or (record.status == "rejected" and not record.duplicate_of):
            continue
        text = dedup_text(record, literals)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest in exact:
            found[record.id] = Duplicate(record.id, exact[digest], "exact", 1.0)
            continue
        exact[digest] = record.id
        mh = _minhash(text.split(), shingle, num_perm)
        best: tuple[float, str] | None = None
        for other in lsh.query(mh):
            similarity = mh.jaccard(hashes[other])
            if similarity >= threshold and (best is None or (similarity, other) > best):
                best = (similarity, other)
        if best is not None:
            found[record.id] = Duplicate(record.id, best[1], "near", round(best[0], 4))
            continue
        lsh.insert(record.id, mh)
        hashes[record.id] = mh
    return found


def _mark(record: Record, dup: Duplicate) -> Record:
    if record.duplicate_of == dup.duplicate_of:
        return record
    record.reason = (
        f"{dup.kind} duplicate of {dup.duplicate_of} (similarity {dup.similarity:.2f}); "
        f"was {record.status}: {record.reason}"
    )
    record.status = "rejected"
    record.duplicate_of = dup.duplicate_of
    return record


def _templates_of(records: Iterable[Record]) -> list[Template]:
    keys = {k for r in records for k in (r.provenance.get("template"),
                                          r.provenance.get("prompt_template")) if k}
    templates = []
    for key in sorted(keys):
        try:
            templates.append(get_template(key))
        except ValueError:
            continue  # a template of another version of the code: nothing to cut
    return templates or list_templates()


def dedup_dir(
    out_dir: Path,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    num_perm: int = DEFAULT_NUM_PERM,
    shingle: int = DEFAULT_SHINGLE,
) -> list[Duplicate]:
    """Mark duplicates in the JSONL shards of ``out_dir`` in place.

    Each changed shard is rewritten to a temporary file, fsynced and renamed over
    the original, so a kill leaves every shard either old or new.
    """
    paths = shard_paths(Path(out_dir))
    per_shard = {path: list(iter_records(path)) for path in paths}
    records = [r for rs in per_shard.values() for r in rs]
    found = find_duplicates(
        records,
        threshold=threshold,
        num_perm=num_perm,
        shingle=shingle,
        templates=_templates_of(records),
    )
    for path, shard in per_shard.items():
        changed = False
        for record in shard:
            dup = found.get(record.id)
            if dup is not None and record.duplicate_of != dup.duplicate_of:
                _mark(record, dup)
                changed = True
        if changed:
            _rewrite(path, shard)
    return sorted(found.values(), key=lambda d: d.id)


def _rewrite(path: Path, records: Sequence[Record]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.to_json() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
