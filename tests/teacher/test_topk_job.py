"""The data job with ``top_k`` (offline logit KD): one TopK per trained record in the
shard's side file, resumable, pinned in job.json, and a teacher of another
vocabulary than the student's refused. A real server with the real small model
(slow), and the same server over scripted engines (fast: the resume bookkeeping)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from teacher.core.records import iter_records, shard_paths
from teacher.core.topk import TopKWriter, read_topk, side_path
from teacher.distill.job import GenerateConfig, JobError, run_job
from teacher.serving.client import TeacherClient
from teacher.serving.engine import EngineSettings, load_engine
from teacher.serving.server import ServerConfig, TeacherServer
from teacher.serving.service import Limits, ModelHost, TeacherService
from tests.teacher.helpers import ScriptedEngine, scripted_top

K = 5


# ---------------------------------------------------------------- scripted engines


@pytest.fixture
async def scripted_client():
    """A real gRPC server whose models follow a script (one token per character):
    "teacher" and "student" share a vocabulary, "wide" has a larger one."""
    cfg = ServerConfig(models=[], host="127.0.0.1", port=0)
    hosts = [ModelHost(name, ScriptedEngine(["Four apples.\n#### 4"], vocab_size=size,
                                                name=name), 64)
             for name, size in (("teacher", 1 << 16), ("student", 1 << 16), ("wide", 1 << 17))]
    server = TeacherServer(TeacherService(hosts, Limits()), cfg)
    await server.start()
    async with TeacherClient(f"127.0.0.1:{server.port}", retries=1) as c:
        yield c
    await server.drain_and_stop()


def scripted_job(out, data_dir, limit: int, **kw) -> GenerateConfig:
    settings = dict(task="gsm8k", split="train", mode="rewrite", out=out, model="teacher",
                    limit=limit, data_dir=data_dir, progress=False, top_k=K,
                    student_model="student")
    return GenerateConfig.from_settings(**{**settings, **kw})


async def test_scripted_side_file_rows_per_record_and_resume(scripted_client, data_dir,
                                                             tmp_path):
    out = tmp_path / "out"
    await run_job(scripted_client, scripted_job(out, data_dir, 3))
    (shard,) = shard_paths(out)
    records = {r.id: r for r in iter_records(shard)}
    rows = read_topk(side_path(shard))
    assert set(rows) == set(records) and len(records) == 3
    for record_id, record in records.items():  # the script's answer is wrong: references
        assert record.status == "fell_back"
        want = scripted_top([ord(c) for c in record.response], K)
        assert rows[record_id].num_tokens == len(record.response)  # one token per char
        np.testing.assert_array_equal(rows[record_id].token_ids, want.token_ids)
    # A record line written, its rows not (killed between): scored on resume, with
    # two new examples; the rows already there are kept byte for byte.
    rest = sorted(records)[1:]
    side = side_path(shard)
    side.unlink()
    with TopKWriter(side) as writer:
        for record_id in rest:
            writer.write(record_id, rows[record_id])
    kept = side.read_bytes()
    summary = await run_job(scripted_client, scripted_job(out, data_dir, 5))
    assert side.read_bytes().startswith(kept)
    assert set(read_topk(side)) == {r.id for r in iter_records(shard)} and summary["records"] == 5
    assert summary["top_k"]["records_scored_now"] == 3
    assert json.loads((out / "job.json").read_text())["top_k"]["vocab_size"] == 1 << 16
    with pytest.raises(JobError, match="model: 'teacher' -> 'student'"):
        await run_job(scripted_client, scripted_job(out, data_dir, 5, top_k_model="student"))
    with pytest.raises(JobError, match="teacher 'wide' has a vocabulary of 131072 tokens, "
                                       "student 'student' of 65536"):
        await run_job(scripted_client, scripted_job(tmp_path / "other", data_dir, 1,
                                                    top_k_model="wide"))


# ---------------------------------------------------------------- the real small model


@pytest.fixture(scope="module")
def other_vocab_model(tmp_path_factory, test_model_dir):
    """A 2-layer Llama with the smollm2 tokenizer but 64 more vocabulary rows."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("other-vocab")
    tokenizer = AutoTokenizer.from_pretrained(test_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer) + 64, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
async def client(test_model_dir, other_vocab_model):
    cfg = ServerConfig(models=[], host="127.0.0.1", port=0)
    settings = EngineSettings(name="hf", dtype="float32")
    hosts = [ModelHost(name, load_engine(settings, str(path), name, "test"), 64)
             for name, path in (("smol", test_model_dir), ("other", other_vocab_model))]
    server = TeacherServer(TeacherService(hosts, cfg.limits), cfg)
    await server.start()
    async with TeacherClient(f"127.0.0.1:{server.port}", retries=1) as c:
        yield c
    await server.drain_and_stop()


def job(out, data_dir, limit: int, top_k: int = K, **kw) -> GenerateConfig:
    """Rewrites of 8 tokens (most fall back to the reference: long responses to score)."""
    return GenerateConfig.from_settings(
        task="gsm8k", split="train", mode="rewrite", out=out, model="smol", limit=limit,
        data_dir=data_dir, concurrency=2, progress=False, max_new_tokens=8, top_k=top_k,
        student_model="smol", **kw)


def side_rows(out) -> dict:
    (shard,) = shard_paths(out)
    return read_topk(side_path(shard))


@pytest.mark.slow
async def test_side_file_holds_one_top_k_per_record_and_resumes(client, data_dir, tmp_path,
                                                                test_model_dir):
    from transformers import AutoTokenizer

    out = tmp_path / "out"
    summary = await run_job(client, job(out, data_dir, 4))
    (shard,) = shard_paths(out)
    records = {r.id: r for r in iter_records(shard)}
    rows = side_rows(out)
    trained = {i for i, r in records.items() if r.status != "rejected"}
    assert len(records) == 4 and set(rows) == trained and trained
    tok = AutoTokenizer.from_pretrained(test_model_dir)
    for record_id in trained:
        top, record = rows[record_id], records[record_id]
        n = len(tok(record.response, add_special_tokens=False)["input_ids"])
        assert top.k == K and top.num_tokens == n == record.response_tokens
        assert np.all(top.logprobs <= 0) and np.all(np.diff(top.logprobs, axis=1) <= 0)
        assert np.all(top.tail_logprobs < 0)
    # The rows are the teacher's: a fresh top-k Score of one record gives the same.
    some = records[sorted(trained)[0]]
    (fresh,) = await client.score([(some.prompt, some.response)], model="smol", top_k=K)
    np.testing.assert_array_equal(fresh.top_logprobs.token_ids, rows[some.id].token_ids)
    np.testing.assert_allclose(fresh.top_logprobs.logprobs, rows[some.id].logprobs, atol=1e-5)
    manifest = json.loads((out / "job.json").read_text())["top_k"]
    assert manifest["k"] == K and manifest["model"] == "smol"
    assert manifest["vocab_size"] == manifest["student_vocab_size"] == len(tok)
    assert summary["top_k"]["records_scored_now"] == len(trained)

    # Killed between a record's line and its rows (and mid-frame): keep the rows of
    # all but the last trained record, then a torn frame.
    last = sorted(trained)[-1]
    side = side_path(shard)
    side.unlink()
    with TopKWriter(side) as writer:
        for record_id in sorted(trained - {last}):
            writer.write(record_id, rows[record_id])
    kept = side.read_bytes()
    with side.open("ab") as handle:
        handle.write(b"\x40\x00\x00\x00partial")
    summary = await run_job(client, job(out, data_dir, 6))  # and two new examples
    records = {r.id: r for r in iter_records(shard)}
    again = side_rows(out)
    trained = {i for i, r in records.items() if r.status != "rejected"}
    assert len(records) == 6 and set(again) == trained
    assert side.read_bytes().startswith(kept)  # earlier rows untouched, torn frame gone
    np.testing.assert_array_equal(again[last].token_ids, rows[last].token_ids)
    new = len(trained) - len(rows) + 1  # the re-scored one and the new examples
    assert summary["top_k"]["records_scored_now"] == new
    assert summary["top_k"]["records_in_side_files"] == len(trained)

    # Done: nothing is scored again; another k into the same side files is refused.
    summary = await run_job(client, job(out, data_dir, 6))
    assert summary["top_k"]["records_scored_now"] == 0
    with pytest.raises(JobError, match="k: 5 -> 3"):
        await run_job(client, job(out, data_dir, 6, top_k=3))


@pytest.mark.slow
async def test_teacher_of_another_vocabulary_is_refused(client, data_dir, tmp_path,
                                                        test_model_dir):
    from transformers import AutoTokenizer

    n = len(AutoTokenizer.from_pretrained(test_model_dir))
    with pytest.raises(JobError, match=f"vocabulary of {n + 64} tokens, student 'smol' of {n}"):
        await run_job(client, job(tmp_path / "out", data_dir, 2, top_k_model="other"))
