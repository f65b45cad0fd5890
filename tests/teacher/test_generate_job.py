"""The resumable data job (teacher.distill.job), dedup (teacher.distill.dedup) and the CLI.

The kill-and-resume test runs the real ``distill-teacher generate`` as a
subprocess against a real server with the real small model, SIGKILLs it
mid-way, restarts it and checks that every id is in the output exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from teacher.cli import main
from teacher.core.records import Record, RecordError, iter_records, read_records
from teacher.core.tasks import get_task
from teacher.core.tasks.gsm8k import GSM8K_REWRITE_V1
from teacher.distill.dedup import dedup_dir, find_duplicates, template_literals
from teacher.distill.job import (
    GenerateConfig,
    JobError,
    ShardWriter,
    check_job_file,
    check_resumed_template,
    example_seed,
    load_done,
    repair_torn_tail,
    summarize,
)
from teacher.serving.engine import EngineSettings, load_engine
from teacher.serving.sampling import SamplingParams
from teacher.serving.server import ServerConfig, TeacherServer
from teacher.serving.service import ModelHost, TeacherService

REPO_ROOT = Path(__file__).resolve().parents[2]


def rec(i: int, response: str, question: str = "", **kw) -> Record:
    fields = {
        "id": f"gsm8k/train/{i:06d}",
        "task": "gsm8k",
        "split": "train",
        "mode": "rewrite",
        "prompt": [{"role": "user", "content": question or f"question {i}"}],
        "question": question or f"question {i}",
        "reference": "r\n#### 1",
        "target": "1",
        "response": response,
        "status": "accepted",
        **kw,
    }
    return Record(**fields)


# ---------------------------------------------------------------- shards and resume


def test_torn_last_line_is_cut_and_records_are_read(tmp_path):
    writer = ShardWriter(tmp_path, shard_size=2)
    for i in range(3):
        writer.write(rec(i, f"answer {i}"))
    writer.close()
    shards = sorted(tmp_path.glob("*.jsonl"))
    assert [p.name for p in shards] == ["records-00000.jsonl", "records-00001.jsonl"]
    with shards[-1].open("a") as handle:
        handle.write('{"id": "gsm8k/train/000003", "task": "gsm')  # killed mid-write
    done, repaired = load_done(tmp_path)
    assert repaired == 1 and sorted(done) == [f"gsm8k/train/{i:06d}" for i in range(3)]
    assert shards[-1].read_text().endswith("\n")
    assert repair_torn_tail(shards[-1]) == 0
    # A restarted writer appends to the last shard and rolls over when it is full.
    writer = ShardWriter(tmp_path, shard_size=2)
    writer.write(rec(3, "answer 3"))
    writer.write(rec(4, "answer 4"))
    writer.close()
    assert len(read_records(tmp_path)) == 5 and len(list(tmp_path.glob("*.jsonl"))) == 3


def test_malformed_or_repeated_lines_name_file_and_line(tmp_path):
    good = rec(0, "a").to_json()
    (tmp_path / "records-00000.jsonl").write_text(f"{good}\nnot json\n{good}\n")
    with pytest.raises(RecordError, match=r"records-00000\.jsonl:2: not valid JSON"):
        load_done(tmp_path)
    (tmp_path / "records-00000.jsonl").write_text(f"{good}\n{good}\n")
    with pytest.raises(RecordError, match=r"records-00000\.jsonl:2: id gsm8k/train/000000"):
        load_done(tmp_path)
    bad = json.loads(good)
    del bad["response"]
    (tmp_path / "records-00000.jsonl").write_text(f"{good}\n{json.dumps(bad)}\n")
    with pytest.raises(RecordError, match=r":2: record misses field\(s\) \['response'\]"):
        load_done(tmp_path)


def test_restart_with_other_settings_is_refused(tmp_path):
    config = GenerateConfig(task="gsm8k", split="train", mode="rewrite", out=tmp_path)
    check_job_file(tmp_path, config)
    check_job_file(tmp_path, GenerateConfig(task="gsm8k", split="train", mode="rewrite",
                                            out=tmp_path, concurrency=2, limit=5))
    with pytest.raises(JobError, match="mode: 'rewrite' -> 'trace'"):
        check_job_file(tmp_path, GenerateConfig(task="gsm8k", split="train", mode="trace",
                                                out=tmp_path))


def test_resuming_into_records_of_another_template_is_refused(tmp_path):
    # best_of_n records made before it sampled the training prompt (the 8-shot prompt in
    # their provenance) still read; the job only refuses to add zero-shot ones beside them.
    old = rec(1, "r\n#### 1", mode="best_of_n",
              provenance={"template": "gsm8k-cot-8shot@v1", "prompt_template":
                          "gsm8k-cot-zeroshot@v1"})
    now = rec(2, "r\n#### 1", mode="best_of_n", provenance={"template": "gsm8k-cot-zeroshot@v1"})
    refused = rec(3, "", mode="best_of_n", status="rejected")  # no provenance: no template
    (tmp_path / "records-00000.jsonl").write_text(old.to_json() + "\n")
    done, _ = load_done(tmp_path)
    assert done[old.id].provenance["template"] == "gsm8k-cot-8shot@v1"
    config = GenerateConfig(task="gsm8k", split="train", mode="best_of_n", out=tmp_path)
    with pytest.raises(JobError, match=r"generated with template gsm8k-cot-8shot@v1, but mode "
                                       r"best_of_n now uses gsm8k-cot-zeroshot@v1"):
        check_resumed_template(done, config)
    check_resumed_template({now.id: now, refused.id: refused}, config)
    trace = GenerateConfig(task="gsm8k", split="train", mode="trace", out=tmp_path)
    check_resumed_template(done, trace)  # trace still samples the 8-shot prompt
    with pytest.raises(JobError, match="gsm8k-cot-zeroshot@v1, but mode trace now uses "
                                       "gsm8k-cot-8shot@v1"):
        check_resumed_template({now.id: now}, trace)


def test_flat_sampling_settings_make_up_the_job_sampling(tmp_path):
    config = GenerateConfig.from_settings(task="gsm8k", split="train", mode="trace",
                                          out=tmp_path, temperature=0.5, max_new_tokens=16,
                                          seed=3)
    assert config.sampling == SamplingParams(temperature=0.5, top_p=0.95, max_new_tokens=16,
                                             seed=3)
    options = config.options("gsm8k/train/000001")
    assert options.sampling.seed == example_seed(3, "gsm8k/train/000001")
    greedy = GenerateConfig.from_settings(task="gsm8k", split="train", mode="rewrite",
                                          out=tmp_path).options("x").sampling
    assert greedy.temperature == 0.0 and greedy.top_p == 1.0  # the mode's default
    assert {"temperature", "top_p", "max_new_tokens", "seed", "concurrency"} <= (
        GenerateConfig.setting_names())
    assert "sampling" not in GenerateConfig.setting_names()
    check_job_file(tmp_path, config)
    job = json.loads((tmp_path / "job.json").read_text())
    assert job["pinned"]["seed"] == 3
    assert list(job["settings"]) == [
        "task", "split", "mode", "out", "model", "scorer_model", "limit", "sample_seed", "data_dir",
        "num_candidates", "template", "temperature", "top_p", "max_new_tokens", "seed",
        "ppl_threshold", "require_correct", "fallback", "concurrency", "shard_size",
        "num_workers", "worker_index", "dedup", "near_dup_threshold", "timeout_s", "progress",
        "top_k", "top_k_model", "student_model"]


def test_example_seed_is_stable_and_distinct():
    assert example_seed(0, "gsm8k/train/000001") == example_seed(0, "gsm8k/train/000001")
    assert example_seed(0, "gsm8k/train/000001") != example_seed(0, "gsm8k/train/000002")
    assert example_seed(1, "gsm8k/train/000001") != example_seed(0, "gsm8k/train/000001")


def test_summary_weights_by_tokens():
    records = [
        rec(0, "a", response_nll=1.0, response_tokens=10, response_frac_above_threshold=0.5,
            reference_nll=2.0, reference_tokens=10, reference_frac_above_threshold=1.0),
        rec(1, "b", status="fell_back", response_nll=3.0, response_tokens=30,
            response_frac_above_threshold=0.0, reference_nll=3.0, reference_tokens=30,
            reference_frac_above_threshold=0.0),
        rec(2, "", status="rejected", reference_nll=1.0, reference_tokens=10,
            reference_frac_above_threshold=0.0),
    ]
    s = summarize(records)
    assert (s["accepted"], s["fell_back"], s["rejected"]) == (1, 1, 1)
    assert s["chosen"]["tokens"] == 40 and s["chosen"]["mean_nll"] == pytest.approx(2.5)
    assert s["chosen"]["frac_above_threshold"] == pytest.approx(5 / 40)
    assert s["reference"]["mean_nll"] == pytest.approx((20 + 90 + 10) / 50)
    assert s["accepted_chosen"]["mean_nll"] == 1.0 and s["accepted_reference"]["mean_nll"] == 2.0


# ---------------------------------------------------------------- dedup


def test_exact_and_near_duplicates_are_found_in_id_order():
    text = ("Natalia sold 48 / 2 = 24 clips in May. Natalia sold 48 + 24 = 72 clips "
            "altogether in April and May, which is the total she sold over both months.\n#### 72")
    q = "How many clips did Natalia sell altogether in April and May?"
    records = [
        rec(3, text.replace("altogether", "in total"), q),  # near (one word differs)
        rec(1, text, q),
        rec(2, "  " + text.upper() + "  ", q),  # exact after normalisation
        rec(4, "Weng earns 12 / 60 = 0.2 per minute, so 0.2 x 50 = 10.\n#### 10", q),
        rec(5, text, "A different question about something else entirely?"),
    ]
    found = find_duplicates(records, threshold=0.7)
    assert found["gsm8k/train/000002"].duplicate_of == "gsm8k/train/000001"
    assert found["gsm8k/train/000002"].kind == "exact"
    assert found["gsm8k/train/000003"].duplicate_of == "gsm8k/train/000001"
    assert found["gsm8k/train/000003"].kind == "near"
    assert "gsm8k/train/000001" not in found and "gsm8k/train/000004" not in found
    assert "gsm8k/train/000005" not in found  # same answer to another question


def test_template_text_is_excluded():
    """Rewrites that echo the template share its text, not their content."""
    literals = template_literals([GSM8K_REWRITE_V1])
    assert any(line.startswith("Below are an instruction") for line in literals)
    head = GSM8K_REWRITE_V1.text.split("\n")[0]
    q = "What is the answer?"
    a = rec(1, f"{head}\n### Response:\nShe has 5 apples.\n#### 5", q)
    b = rec(2, f"{head}\n### Response:\nHe owes 17 dollars.\n#### 17", q)
    assert find_duplicates([a, b], threshold=0.5, templates=[GSM8K_REWRITE_V1]) == {}
    # Without excluding the template the shared text alone merges them.
    assert set(find_duplicates([a, b], threshold=0.5, templates=[])) == {b.id}


def test_dedup_dir_marks_in_place_and_is_idempotent(tmp_path):
    writer = ShardWriter(tmp_path, shard_size=10)
    for r in (rec(2, "same answer here\n#### 1", "q"), rec(1, "same answer here\n#### 1", "q"),
              rec(3, "other\n#### 1", "q")):
        writer.write(r)
    writer.close()
    dups = dedup_dir(tmp_path)
    assert [(d.id, d.duplicate_of, d.kind) for d in dups] == [
        ("gsm8k/train/000002", "gsm8k/train/000001", "exact")
    ]
    by_id = {r.id: r for r in read_records(tmp_path)}
    marked = by_id["gsm8k/train/000002"]
    assert marked.status == "rejected" and marked.duplicate_of == "gsm8k/train/000001"
    assert "was accepted" in marked.reason
    before = (tmp_path / "records-00000.jsonl").read_text()
    assert dedup_dir(tmp_path) == dups
    assert (tmp_path / "records-00000.jsonl").read_text() == before
    assert len(by_id) == 3 and not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------- CLI errors


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(["generate", "--no-progress", *args])
    return code, capsys.readouterr().err


def test_cli_bad_input_gives_clear_errors(tmp_path, data_dir, capsys):
    base = ["--mode", "rewrite", "--address", "127.0.0.1:1", "--out", str(tmp_path / "o")]
    code, err = run_cli(["--task", "gsm8k", "--data-dir", str(tmp_path / "nope"), *base], capsys)
    assert code == 2 and "data directory not found" in err and "nope" in err
    code, err = run_cli(["--task", "gsm9k", *base], capsys)
    assert code == 2 and "unknown task 'gsm9k'" in err and "did you mean 'gsm8k'" in err
    code, err = run_cli(["--task", "gsm8k", "--split", "dev", *base], capsys)
    assert code == 2 and "unknown split 'dev'" in err
    code, err = run_cli(["--task", "wikitext-2", *base], capsys)
    assert code == 2 and "no answers to distill" in err
    out = tmp_path / "bad"
    out.mkdir()
    (out / "records-00000.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    code, err = run_cli(["--task", "gsm8k", "--data-dir", str(data_dir), "--mode", "rewrite",
                         "--address", "127.0.0.1:1", "--out", str(out)], capsys)
    assert code == 2 and "records-00000.jsonl:1: record misses field(s)" in err
    assert "Traceback" not in err


def test_cli_unreachable_teacher(tmp_path, data_dir, capsys):
    code, err = run_cli(["--task", "gsm8k", "--data-dir", str(data_dir), "--limit", "2",
                         "--mode", "rewrite", "--address", "127.0.0.1:1",
                         "--out", str(tmp_path)], capsys)
    assert code == 2
    assert "teacher 127.0.0.1:1 did not answer ListModels after 5 attempts: UNAVAILABLE" in err


# ---------------------------------------------------------------- kill and resume


@pytest.fixture(scope="module")
async def server(test_model_dir):
    cfg = ServerConfig(models=[], host="127.0.0.1", port=0)
    engine = load_engine(EngineSettings(name="hf", dtype="float32"), str(test_model_dir), "smol",
                         "test")
    srv = TeacherServer(TeacherService([ModelHost("smol", engine, 64)], cfg.limits), cfg)
    await srv.start()
    yield srv
    await srv.drain_and_stop()


def count_lines(out: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in out.glob("*.jsonl"))


@pytest.mark.slow
async def test_sigkill_and_resume_gives_every_id_once(server, data_dir, tmp_path):
    """The server runs in this test's event loop, so the job is awaited, not waited on."""
    out = tmp_path / "out"
    limit = 10
    cmd = [
        sys.executable, "-m", "teacher.cli", "generate", "--task", "gsm8k", "--split", "train",
        "--mode", "best-of-n", "--template", "gsm8k-cot-zeroshot", "-n", "2",
        "--max-new-tokens", "6", "--concurrency", "2",
        "--limit", str(limit), "--data-dir", str(data_dir), "--no-progress",
        "--address", f"127.0.0.1:{server.port}", "--out", str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    log_path = tmp_path / "first.log"
    with log_path.open("w") as log_file:  # a file, not a pipe nobody drains
        first = await asyncio.create_subprocess_exec(*cmd, env=env, cwd=REPO_ROOT,
                                                     stderr=log_file)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while count_lines(out) < 3:
        assert first.returncode is None, log_path.read_text()
        assert loop.time() < deadline, "the job wrote nothing in 120 s"
        await asyncio.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    written = count_lines(out)
    assert 3 <= written < limit, "killed too late to test resuming"
    # A kill in the middle of a write leaves a torn line: simulate one.
    shard = sorted(out.glob("*.jsonl"))[-1]
    with shard.open("a") as handle:
        handle.write('{"id": "gsm8k/train/0000')

    second = await asyncio.create_subprocess_exec(*cmd, env=env, cwd=REPO_ROOT,
                                                  stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(second.communicate(), timeout=300)
    log = stderr.decode()
    assert second.returncode == 0, log
    assert f"{written} already in" in log and f"{limit - written} to generate" in log
    assert "repaired 1 torn line(s)" in log
    assert "records: 10" in log and "ground truth under the scorer" in log

    records = read_records(out)
    ids = [e.id for e in get_task("gsm8k").load("train", data_dir, limit)]
    assert sorted(r.id for r in records) == ids  # every id, exactly once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == limit and summary["skipped"] == written

    # Done: a third run skips everything and changes nothing.
    before = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    third = await asyncio.create_subprocess_exec(*cmd, env=env, cwd=REPO_ROOT,
                                                 stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(third.communicate(), timeout=120)
    assert third.returncode == 0 and f"{limit} already in" in stderr.decode()
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == before


@pytest.mark.slow
async def test_workers_write_disjoint_shards_then_one_run_finalizes(server, data_dir, tmp_path):
    """Three workers split the examples by id hash, concurrently, into one directory;
    a plain run afterwards generates nothing and writes the summary over all shards."""
    out = tmp_path / "out"
    limit = 9

    def cmd(worker: str) -> list[str]:
        return [sys.executable, "-m", "teacher.cli", "generate", "--task", "gsm8k",
                "--mode", "rewrite", "--max-new-tokens", "4", "--limit", str(limit),
                "--data-dir", str(data_dir), "--no-progress", "--worker", worker,
                "--address", f"127.0.0.1:{server.port}", "--out", str(out)]

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    workers = [await asyncio.create_subprocess_exec(*cmd(f"{i}/3"), env=env, cwd=REPO_ROOT,
                                                    stderr=asyncio.subprocess.PIPE)
               for i in range(3)]
    logs = [(await asyncio.wait_for(w.communicate(), timeout=300))[1].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], logs
    per_worker = [sorted(r.id for r in iter_records(p))
                  for i in range(3) for p in out.glob(f"records-w{i:03d}of003-*.jsonl")]
    ids = [e.id for e in get_task("gsm8k").load("train", data_dir, limit)]
    assert sorted(i for shard in per_worker for i in shard) == ids  # disjoint, complete
    assert len([s for s in per_worker if s]) >= 2  # the hash spreads the work
    assert sorted(p.name for p in out.glob("summary-*.json")) == [
        f"summary-w{i:03d}of003.json" for i in range(3)]
    assert not (out / "summary.json").exists()

    final = await asyncio.create_subprocess_exec(*cmd("0/1"), env=env, cwd=REPO_ROOT,
                                                 stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(final.communicate(), timeout=120)
    assert final.returncode == 0 and f"{limit} already in" in stderr.decode()
    assert json.loads((out / "summary.json").read_text())["records"] == limit
    assert sorted(r.id for r in read_records(out)) == ids

