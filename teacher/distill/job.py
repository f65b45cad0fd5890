"""The resumable distillation data job behind ``distill-teacher generate``.

Streams a task split through the teacher's ``Distill`` RPC (any number of
replicas, via :class:`~teacher.serving.client.TeacherClient`) with a bounded number of
examples in flight, and appends each finished record as one JSONL line, flushed
and fsynced, to ``records-NNNNN.jsonl`` shards that
``datasets.load_dataset("json", data_files=f"{out}/*.jsonl")`` reads as is.

Killed at any moment and restarted with the same command, it reads the shards
back (cutting off a torn last line), skips the ids already done and finishes the
rest, so every example ends up in the output exactly once. ``job.json`` pins what
the directory was made with; a restart with a different task, split, mode or
model is refused. At the end duplicates are marked (``teacher.distill.dedup``) and
``summary.json`` is written.

Scaling out: ``num_workers``/``worker_index`` (``--worker I/N``) give worker I the
examples whose id hashes to I modulo N; each worker writes its own shards
(``records-wIIIofNNN-*.jsonl``) and ``summary-wIIIofNNN.json`` into the same
directory, so workers never share a file. A plain (single-worker) run of the same
job afterwards finds every example done, marks duplicates across all shards and
writes ``summary.json``.

Offline logit KD (``top_k`` > 0): each record's chosen response is scored under the
teacher (``top_k_model``, default the generator) with ``Score(top_k)``, and its top-k
rows are appended to the shard's side file (``teacher.core.topk.side_path``) keyed by
the record id. A restart scores the records whose rows are missing (killed between
the two writes, or made before top_k was asked for); ``job.json`` records k, the
scorer and its vocabulary size (``top_k``), and a served ``student_model`` whose
vocabulary differs from the scorer's is refused (cross-tokenizer KD is out of scope).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import time
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import grpc

from teacher.core.records import Record, RecordError, iter_records, shard_paths
from teacher.core.tasks import Example, get_task
from teacher.core.topk import TopKWriter, side_path
from teacher.distill.modes import (
    DEFAULT_PPL_THRESHOLD,
    DistillOptions,
    example_record_base,
    get_mode,
    normalize_mode,
)
from teacher.serving.errors import InvalidArgument
from teacher.serving.sampling import SamplingParams

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
SUMMARY_FILE = "summary.json"
# What a restart must agree on; the rest (concurrency, limit, ...) may change.
PINNED = ("task", "split", "mode", "model", "scorer_model", "template", "num_candidates", "seed")
# The flat settings (CLI flags, experiment YAML keys, job.json) that make up
# ``GenerateConfig.sampling``, with their defaults; temperature None = the mode's.
SAMPLING_SETTINGS: dict[str, Any] = {
    "temperature": None, "top_p": 0.95, "max_new_tokens": 0, "seed": 0,
}


class JobError(RuntimeError):
    """The job cannot run as asked; the message says why."""


@dataclass
class GenerateConfig:
    task: str
    split: str
    mode: str
    out: Path
    model: str = ""  # generator name on the server ("" = its default)
    scorer_model: str = ""  # "" = the generator
    limit: int | None = None
    # None: the first ``limit`` examples in file order; a seed: ``limit`` examples drawn
    # with it (teacher.core.tasks.draw), the draw the student and experiment make too.
    sample_seed: int | None = None
    data_dir: Path | None = None
    num_candidates: int = 0  # 0 = the mode default
    template: str = ""
    # Temperature, top_p (used only when sampling), max_new_tokens (0 = the template's)
    # and the job seed each example's seed derives from (example_seed). None: the
    # SAMPLING_SETTINGS defaults (the mode's temperature).
    sampling: SamplingParams | None = None
    ppl_threshold: float = DEFAULT_PPL_THRESHOLD
    require_correct: bool = True
    fallback: str = "reference"
    concurrency: int = 8
    shard_size: int = 10_000
    num_workers: int = 1  # workers sharing the job (by example-id hash)
    worker_index: int = 0
    dedup: bool = True
    near_dup_threshold: float = 0.85
    timeout_s: float = 3600.0
    progress: bool = True
    # Offline logit KD: the teacher's top-k next tokens per response token, into the
    # shards' side files; 0 = off. top_k_model: the teacher giving them ("" = model).
    top_k: int = 0
    top_k_model: str = ""
    # The student's served name, if the server has it: with top_k, a teacher whose
    # vocabulary differs from the student's is refused.
    student_model: str = ""

    def __post_init__(self) -> None:
        self.mode = normalize_mode(self.mode)
        self.out = Path(self.out)
        if self.sampling is None:
            self.sampling = job_sampling(self.mode)
        elif self.sampling.seed is None:
            self.sampling = replace(self.sampling, seed=0)
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.worker_index < self.num_workers:
            raise ValueError(f"worker {self.worker_index}/{self.num_workers}: the index must "
                             "be in [0, number of workers)")

    @classmethod
    def from_settings(cls, **settings: Any) -> GenerateConfig:
        """A config from flat settings, spelled as the CLI and experiment YAML spell them:
        ``temperature``, ``top_p``, ``max_new_tokens`` and ``seed`` make up ``sampling``."""
        flat = {name: settings.pop(name) for name in SAMPLING_SETTINGS if name in settings}
        config = cls(**settings)
        if flat:
            config.sampling = job_sampling(config.mode, **flat)
        return config

    @classmethod
    def setting_names(cls) -> set[str]:
        """What ``from_settings`` accepts."""
        return {f.name for f in fields(cls)} - {"sampling"} | set(SAMPLING_SETTINGS)

    def settings(self) -> dict[str, Any]:
        """Every setting under its flat name, in field order (what job.json records)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "sampling":
                out.update({name: getattr(value, name) for name in SAMPLING_SETTINGS})
            else:
                out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    @property
    def shard_prefix(self) -> str:
        """What this worker's shard names start with ("" for a single worker)."""
        if self.num_workers == 1:
            return ""
        return f"w{self.worker_index:03d}of{self.num_workers:03d}-"

    def owns(self, example_id: str) -> bool:
        return zlib.crc32(example_id.encode()) % self.num_workers == self.worker_index

    def options(self, example_id: str) -> DistillOptions:
        s = self.sampling
        return DistillOptions(
            mode=self.mode,
            model=self.model,
            scorer_model=self.scorer_model,
            num_candidates=self.num_candidates,
            template=self.template,
            sampling=replace(
                s,
                top_p=s.top_p if s.temperature > 0 else 1.0,
                seed=example_seed(s.seed, example_id),
            ),
            ppl_threshold=self.ppl_threshold,
            require_correct=self.require_correct,
            fallback=self.fallback,
        )

    def pinned(self) -> dict[str, Any]:
        settings = self.settings()
        return {k: settings[k] for k in PINNED}


def job_sampling(mode: str, **settings: Any) -> SamplingParams:
    """The job's sampling from flat settings (``SAMPLING_SETTINGS``; the rest default)."""
    values = {**SAMPLING_SETTINGS, **settings}
    if values["temperature"] is None:
        values["temperature"] = get_mode(mode).default_temperature
    return SamplingParams(**values)


def example_seed(seed: int, example_id: str) -> int:
    """A per-example seed: the same on every restart, different across examples."""
    return (seed * 1_000_003 + zlib.crc32(example_id.encode())) % 2**63


# ---------------------------------------------------------------- output directory


def repair_torn_tail(path: Path) -> int:
    """Cut a last line that has no newline (a write killed half-way); bytes cut."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return 0
        # Find the last newline, reading backwards in blocks.
        pos, block = size, 1 << 16
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            handle.seek(start)
            chunk = handle.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                break
            pos = start
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return size - keep


def _own_shards(out: Path, prefix: str | None) -> list[Path]:
    """Every shard (``prefix`` None), or one worker's (other workers may be writing theirs)."""
    paths = shard_paths(out)
    if prefix is None:
        return paths
    return [p for p in paths if p.name.startswith(f"records-{prefix}")
            and p.name[len(f"records-{prefix}"):][:1].isdigit()]


def load_done(out: Path, prefix: str | None = None) -> tuple[dict[str, Record], int]:
    """Records already written (by id) and the number of torn tails repaired; only
    the shards named ``records-<prefix>NNNNN.jsonl`` when a worker prefix is given.

    Any line but a torn last one that does not parse raises ``RecordError`` with
    ``file:line``. An id written twice (it cannot happen with this writer) is an
    error too, since the output must hold each example once.
    """
    done: dict[str, Record] = {}
    repaired = 0
    for path in _own_shards(out, prefix):
        cut = repair_torn_tail(path)
        if cut:
            repaired += 1
            log.warning("%s: cut a torn last line (%d bytes) left by an interrupted run",
                        path, cut)
        for number, record in enumerate(iter_records(path), start=1):
            if record.id in done:
                raise RecordError(f"{path}:{number}: id {record.id} is already in the output")
            done[record.id] = record
    return done, repaired


class ShardWriter:
    """Appends records as whole lines, fsynced, rolling to a new shard when full."""

    def __init__(self, out: Path, shard_size: int, prefix: str = ""):
        self.out = out
        self.shard_size = shard_size
        self.pattern = f"records-{prefix}{{:05d}}.jsonl"
        paths = _own_shards(out, prefix)
        self.index = int(paths[-1].stem.split("-")[-1]) if paths else 0
        self.count = paths[-1].read_bytes().count(b"\n") if paths else 0
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None or self.count >= self.shard_size:
            if self._fd is not None:
                os.close(self._fd)
                self.index += 1
                self.count = 0
            path = self.out / self.pattern.format(self.index)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return self._fd

    def write(self, record: Record) -> Path:
        """Append ``record``; the shard it went to."""
        fd = self._open()
        data = (record.to_json() + "\n").encode("utf-8")
        os.write(fd, data)  # one append of the whole line: torn only if killed mid-call
        os.fsync(fd)
        self.count += 1
        return self.out / self.pattern.format(self.index)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def check_job_file(out: Path, config: GenerateConfig) -> None:
    """Write ``job.json`` on the first run; refuse a restart that changes it."""
    path = out / JOB_FILE
    pinned = config.pinned()
    if path.exists():
        try:
            previous = json.loads(path.read_text())["pinned"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise JobError(f"{path}: unreadable job file ({exc}); move it away") from exc
        changed = {k: (previous.get(k), v) for k, v in pinned.items() if previous.get(k) != v}
        if changed:
            diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise JobError(
                f"{out} was made by a different job ({diff}); use another --out "
                "or the same settings to resume"
            )
        return
    settings = config.settings()
    path.write_text(json.dumps({"pinned": pinned, "settings": settings}, indent=2) + "\n")


def check_resumed_template(done: dict[str, Record], config: GenerateConfig) -> None:
    """Refuse to add records to an output whose records were generated with another
    template than the mode resolves now, so one output never mixes two prompts'
    distributions (best_of_n sampled the 8-shot prompt before it sampled the student's
    training prompt; a job of that time, resumed, would otherwise mix both). Resolved
    here as the server resolves it (same code); a template the mode refuses is left to
    the server, which rejects each example with the reason."""
    try:
        now = get_mode(config.mode).template(get_task(config.task), config.template).key
    except (InvalidArgument, KeyError, ValueError):
        return
    before = sorted({t for r in done.values() if (t := r.provenance.get("template"))} - {now})
    if before:
        raise JobError(
            f"{config.out}: records there were generated with template {', '.join(before)}, "
            f"but mode {config.mode} now uses {now}; use another --out (or move the "
            "records away) to generate them again"
        )


# ---------------------------------------------------------------- summary


@dataclass
class Stats:
    """Running counts for the progress bar."""

    done: int = 0
    accepted: int = 0
    fell_back: int = 0
    rejected: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, record: Record) -> None:
        self.done += 1
        setattr(self, record.status, getattr(self, record.status) + 1)
        usage = record.provenance.get("usage") or {}
        self.completion_tokens += int(usage.get("completion_tokens") or 0)

    def postfix(self) -> dict[str, str]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return {
            "tok/s": f"{self.completion_tokens / elapsed:.1f}",
            "accept": f"{self.accepted / self.done:.0%}" if self.done else "-",
            "fell_back": str(self.fell_back),
        }


def _token_weighted(pairs: Iterable[tuple[float | None, int | None, float | None]]) -> dict:
    """Per-token mean NLL, perplexity and share above threshold over (mean, n, frac)."""
    nll = tokens = above = 0.0
    count = 0
    for mean, n, frac in pairs:
        if mean is None or not n:
            continue
        nll += mean * n
        above += (frac or 0.0) * n
        tokens += n
        count += 1
    if not tokens:
        return {"records": 0, "tokens": 0, "mean_nll": None, "perplexity": None,
                "frac_above_threshold": None}
    return {
        "records": count,
        "tokens": int(tokens),
        "mean_nll": nll / tokens,
        "perplexity": math.exp(nll / tokens),
        "frac_above_threshold": above / tokens,
    }


def summarize(records: Iterable[Record]) -> dict[str, Any]:
    """Counts, and the scorer's per-token NLL of chosen responses vs the references.

    ``chosen`` covers every record with a training response (fallbacks count with
    the reference's score); ``accepted_chosen`` / ``accepted_reference`` compare
    the generated responses with the references of the same examples.
    """
    records = list(records)
    counts = {s: sum(r.status == s for r in records) for s in ("accepted", "fell_back",
                                                               "rejected")}
    duplicates = sum(r.duplicate_of is not None for r in records)
    live = [r for r in records if r.status != "rejected"]
    accepted = [r for r in records if r.status == "accepted"]

    def chosen(rs):
        return _token_weighted(
            (r.response_nll, r.response_tokens, r.response_frac_above_threshold) for r in rs
        )

    def reference(rs):
        return _token_weighted(
            (r.reference_nll, r.reference_tokens, r.reference_frac_above_threshold) for r in rs
        )

    candidates = [c for r in records for c in r.candidates]
    return {
        "records": len(records),
        **counts,
        "duplicates": duplicates,
        "acceptance_rate": counts["accepted"] / len(records) if records else None,
        "candidates": len(candidates),
        "candidates_correct": sum(bool(c.correct) for c in candidates),
        "chosen": chosen(live),
        "reference": reference(records),
        "accepted_chosen": chosen(accepted),
        "accepted_reference": reference(accepted),
    }


def format_summary(summary: dict[str, Any]) -> str:
    def stat(s: dict) -> str:
        if not s["tokens"]:
            return "n/a"
        return (f"NLL {s['mean_nll']:.4f}/token, perplexity {s['perplexity']:.3f}, "
                f"{s['frac_above_threshold']:.1%} of {s['tokens']} tokens above threshold")

    return "\n".join([
        f"records: {summary['records']}  accepted: {summary['accepted']}  "
        f"fell back: {summary['fell_back']}  rejected: {summary['rejected']} "
        f"(of which duplicates: {summary['duplicates']})",
        f"chosen responses under the scorer: {stat(summary['chosen'])}",
        f"ground truth under the scorer:     {stat(summary['reference'])}",
        f"accepted only, generated:          {stat(summary['accepted_chosen'])}",
        f"accepted only, their ground truth: {stat(summary['accepted_reference'])}",
    ])


# ---------------------------------------------------------------- the job


def load_examples(config: GenerateConfig) -> list[Example]:
    task = get_task(config.task)  # ValueError naming the known tasks
    if task.output_type != "generate_until":
        raise JobError(f"task {task.name!r} has no answers to distill (it is scored on "
                       "perplexity); use gsm8k or bbh/<subtask>")
    examples = task.load(config.split, config.data_dir, config.limit, config.sample_seed)
    return [e for e in examples if config.owns(e.id)]


def _rejected_record(example: Example, mode: str, reason: str) -> Record:
    """A record for an example the teacher refused (a deterministic INVALID_ARGUMENT)."""
    task = get_task(example.task)
    base = example_record_base(task, example, mode)
    return Record(**base, response="", status="rejected", reason=reason)


async def run_job(client, config: GenerateConfig) -> dict[str, Any]:
    """Generate every missing record of ``config`` through ``client``; the summary."""
    from tqdm.auto import tqdm

    examples = load_examples(config)
    config.out.mkdir(parents=True, exist_ok=True)
    check_job_file(config.out, config)
    worker = config.num_workers > 1
    done, repaired = load_done(config.out, config.shard_prefix if worker else None)
    wanted = {e.id for e in examples}
    todo = [e for e in examples if e.id not in done]
    if todo:
        check_resumed_template(done, config)
    skipped = len(examples) - len(todo)
    print(
        (f"worker {config.worker_index}/{config.num_workers}: " if worker else "")
        + f"{config.task} {config.split}: {len(examples)} examples, {skipped} already in "
        f"{config.out} (skipped), {len(todo)} to generate"
        + (f"; repaired {repaired} torn line(s)" if repaired else ""),
        file=sys.stderr,
        flush=True,
    )
    if todo or config.top_k:
        await _check_models(client, config)
    top = await TopKScorer.open(client, config) if config.top_k else None
    if top is not None:
        await top.backfill(_all_records(config.out, config.shard_prefix if worker else None))
    writer = ShardWriter(config.out, config.shard_size, config.shard_prefix)
    stats = Stats()
    semaphore = asyncio.Semaphore(config.concurrency)
    bar = tqdm(total=len(todo), unit="ex", disable=not config.progress, desc=config.mode)

    async def one(example: Example) -> None:
        async with semaphore:
            try:
                record = await client.distill(
                    example, config.options(example.id), timeout_s=config.timeout_s
                )
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                record = _rejected_record(example, config.mode, f"teacher: {err.details()}")
            shard = writer.write(record)
            if top is not None:  # after the record: a kill between is made good on resume
                await top.add(record, shard)
        stats.add(record)
        bar.set_postfix(stats.postfix(), refresh=False)
        bar.update(1)

    tasks = [asyncio.ensure_future(one(e)) for e in todo]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        bar.close()
        writer.close()
        if top is not None:
            top.close()

    duplicates = []
    if config.dedup and not worker:  # across workers: by the single-worker run at the end
        from teacher.distill.dedup import dedup_dir

        duplicates = dedup_dir(config.out, threshold=config.near_dup_threshold)
    records = [r for r, _ in _all_records(config.out, config.shard_prefix if worker else None)
               if r.id in wanted]
    summary = summarize(records)
    summary.update(
        skipped=skipped,
        generated=len(todo),
        repaired_torn_lines=repaired,
        wall_time_s=time.perf_counter() - stats.started,
        examples_per_s=len(todo) / max(time.perf_counter() - stats.started, 1e-9),
        completion_tokens=stats.completion_tokens,
        duplicate_ids=[asdict(d) for d in duplicates],
        ppl_threshold=config.ppl_threshold,
    )
    if top is not None:
        summary["top_k"] = top.summary()
    name = f"summary-{config.shard_prefix[:-1]}.json" if worker else SUMMARY_FILE
    (config.out / name).write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary), file=sys.stderr, flush=True)
    return summary


def _all_records(out: Path, prefix: str | None = None) -> list[tuple[Record, Path]]:
    return [(r, p) for p in _own_shards(out, prefix) for r in iter_records(p)]


async def _check_models(client, config: GenerateConfig) -> None:
    """Fail early, by name, when the server does not host the asked-for models."""
    served = [m.name for m in await client.list_models()]
    for role, name in (("--model", config.model), ("--scorer-model", config.scorer_model),
                       ("--top-k-model", config.top_k_model),
                       ("--student-model", config.student_model)):
        if name and name not in served:
            raise JobError(f"{role} {name!r} is not served by the teacher; it serves {served}")


# ---------------------------------------------------------------- top-k side files

# Chosen responses scored per Score call when filling in missing rows on a restart.
_BACKFILL_BATCH = 8
# Text whose token ids must agree between teacher and student (beside the vocab size).
_VOCAB_PROBE = "The student learns 17 * 23 = 391 from the teacher; ü, 日本, <|im_end|>."


def _needs_top_k(record: Record) -> bool:
    """Records the student trains on (a rejected one has no response to train on)."""
    return record.status != "rejected" and bool(record.response)


class TopKScorer:
    """Scores chosen responses with top-k under the teacher into the side files."""

    def __init__(self, client, config: GenerateConfig, manifest: dict[str, Any]):
        self.client = client
        self.config = config
        self.model = manifest["model"]
        self.k = config.top_k
        self.manifest = manifest
        self._writers: dict[Path, TopKWriter] = {}
        self.scored = 0  # records scored by this run
        self.tokens = 0  # their response tokens

    @classmethod
    async def open(cls, client, config: GenerateConfig) -> TopKScorer:
        """Check the teacher (and the student's vocabulary) and pin them in job.json."""
        served = {m.name: m for m in await client.list_models()}
        name = config.top_k_model or config.model or next(
            m.name for m in served.values() if m.is_default)
        teacher = served[name]
        manifest = {"k": config.top_k, "model": name, "source": teacher.source,
                    "revision": teacher.revision, "engine": teacher.engine,
                    "vocab_size": teacher.vocab_size}
        if config.student_model:
            student = served[config.student_model]
            if student.vocab_size != teacher.vocab_size:
                raise JobError(
                    f"top_k: teacher {name!r} has a vocabulary of {teacher.vocab_size} tokens, "
                    f"student {student.name!r} of {student.vocab_size}; logit distillation "
                    "needs one vocabulary (cross-tokenizer KD is not supported)")
            ids = [(await client.tokenize(_VOCAB_PROBE, model=m)).token_ids
                   for m in (name, student.name)]
            if ids[0] != ids[1]:
                raise JobError(
                    f"top_k: teacher {name!r} and student {student.name!r} tokenize the same "
                    "text differently; logit distillation needs one tokenizer")
            manifest.update(student_model=student.name, student_vocab_size=student.vocab_size)
        _pin_top_k(config.out, manifest)
        return cls(client, config, manifest)

    def _writer(self, shard: Path) -> TopKWriter:
        if shard not in self._writers:
            self._writers[shard] = TopKWriter(side_path(shard))
        return self._writers[shard]

    async def _score(self, records: list[Record], shard: Path) -> None:
        results = await self.client.score(
            [(r.prompt, r.response) for r in records], model=self.model, top_k=self.k,
            timeout_s=self.config.timeout_s)
        writer = self._writer(shard)
        for record, result in zip(records, results, strict=True):
            top = result.top_logprobs
            if top is None or top.num_tokens != result.num_tokens or top.k != self.k:
                raise JobError(f"top_k: the teacher returned no {self.k} rows per token for "
                               f"{record.id}")
            writer.write(record.id, top)
            self.scored += 1
            self.tokens += top.num_tokens

    async def add(self, record: Record, shard: Path) -> None:
        if _needs_top_k(record) and record.id not in self._writer(shard).ids:
            await self._score([record], shard)

    async def backfill(self, written: list[tuple[Record, Path]]) -> None:
        """Score the records already written whose rows are not in their side file."""
        by_shard: dict[Path, list[Record]] = {}
        for record, shard in written:
            if _needs_top_k(record) and record.id not in self._writer(shard).ids:
                by_shard.setdefault(shard, []).append(record)
        missing = sum(len(rs) for rs in by_shard.values())
        if missing:
            print(f"top-k: {missing} written record(s) have no top-k rows yet; scoring them",
                  file=sys.stderr, flush=True)
        for shard, records in by_shard.items():
            for at in range(0, len(records), _BACKFILL_BATCH):
                await self._score(records[at:at + _BACKFILL_BATCH], shard)

    def summary(self) -> dict[str, Any]:
        stored = sum(len(w.ids) for w in self._writers.values())
        return {**self.manifest, "records_scored_now": self.scored,
                "tokens_scored_now": self.tokens, "records_in_side_files": stored}

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


def _pin_top_k(out: Path, manifest: dict[str, Any]) -> None:
    """Record k and the scorer in job.json; refuse rows of another k or scorer, since
    one side file must hold one teacher's distribution."""
    path = out / JOB_FILE
    job = json.loads(path.read_text())
    previous = job.get("top_k")
    if previous:
        changed = {key: (previous.get(key), manifest[key]) for key in ("k", "model", "source")
                   if previous.get(key) != manifest[key]}
        if changed:
            diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise JobError(f"{out} holds top-k rows of another teacher or k ({diff}); use "
                           "another --out or the same top-k settings")
    job["top_k"] = manifest
    path.write_text(json.dumps(job, indent=2) + "\n")
