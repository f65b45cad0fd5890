"""The run-directory contract: what the student's writer lays out, eval's reader reads."""

from __future__ import annotations

import json

import pytest

from teacher.core import rundir
from teacher.core.rundir import RunDir, RunDirError, TrainExample

PROMPT = [{"role": "user", "content": "What is 2 plus 2? é"}]


def fresh_run(tmp_path, **manifest):
    out = tmp_path / "run"
    train = [TrainExample("t/0", PROMPT, "4", nll=0.5), TrainExample("t/1", PROMPT, "5")]
    val = [TrainExample("t/2", PROMPT, "6")]
    body = {"config": {"seed": 1, "data_dir": "a"}, "dataset_fingerprint": "fp",
            "completed": False, **manifest}
    rundir.start_run_dir(out, rundir.check_run_dir(out, body["config"], "fp", resume=False,
                                                   overwrite=False), body, train, val)
    return out, train, val


def test_the_reader_reads_what_the_writer_wrote(tmp_path):
    out, train, val = fresh_run(tmp_path)
    lines = (out / rundir.TRAIN_EXAMPLES).read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"id": "t/0", "prompt": PROMPT, "response": "4"}  # no nll
    assert "é" in lines[0]  # written as UTF-8, not \u escapes
    run = RunDir(out)
    assert not run.completed and run.manifest["dataset_fingerprint"] == "fp"
    assert run.examples("train") == [TrainExample(e.id, e.prompt, e.response) for e in train]
    assert run.examples("val") == val
    assert rundir.read_manifest(out) == run.manifest
    assert rundir.read_manifest(tmp_path) is None


def test_resume_decisions(tmp_path):
    out, _, _ = fresh_run(tmp_path)
    config = {"seed": 1, "data_dir": "elsewhere"}  # where the data live may move
    with pytest.raises(RunDirError, match=r"holds an unfinished run.*--resume"):
        rundir.check_run_dir(out, config, "fp", resume=False, overwrite=False)
    assert rundir.check_run_dir(out, config, "fp", resume=True, overwrite=False) == "resume"
    assert rundir.check_run_dir(out, config, "xx", resume=False, overwrite=True) == "fresh"
    with pytest.raises(RunDirError, match="data differ"):
        rundir.check_run_dir(out, config, "xx", resume=True, overwrite=False)
    with pytest.raises(RunDirError, match=r"config differs .* \['seed'\]"):
        rundir.check_run_dir(out, {"seed": 2}, "fp", resume=True, overwrite=False)
    rundir.write_manifest(out, {**rundir.read_manifest(out), "completed": True})
    assert rundir.check_run_dir(out, config, "fp", resume=True, overwrite=False) == "done"


def test_resume_keeps_complete_checkpoints_only(tmp_path):
    out, _, _ = fresh_run(tmp_path)
    for step, complete in ((1, True), (2, True), (3, False)):
        ckpt = out / rundir.CHECKPOINTS / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        for name in rundir.ADAPTER_FILES:
            (ckpt / name).write_text("x")
        if complete:
            (ckpt / rundir.CHECKPOINT_STATE).write_text("{}")
    assert rundir.last_checkpoint(out).name == "checkpoint-2"
    assert [name for _, name in RunDir(out).checkpoints()] == [
        "checkpoint-1", "checkpoint-2", "checkpoint-3"]
    rundir.start_run_dir(out, "resume", {}, [], [])
    assert [name for _, name in RunDir(out).checkpoints()] == ["checkpoint-1", "checkpoint-2"]
    assert RunDir(out).manifest["completed"] is False  # a resume rewrites nothing up front


def test_bad_manifest_names_the_file(tmp_path):
    (tmp_path / rundir.MANIFEST).write_text("[1, 2]")
    with pytest.raises(RunDirError, match=r"manifest\.json: expected a JSON object"):
        RunDir(tmp_path)
    (tmp_path / rundir.MANIFEST).write_text("{")
    with pytest.raises(RunDirError, match=r"manifest\.json:1: invalid JSON"):
        rundir.read_manifest(tmp_path)


def test_a_run_made_before_the_design_keys_still_resumes(tmp_path):
    # data.sample_seed / ids_file / split_seed at None select what runs before them did.
    out, _, _ = fresh_run(tmp_path, config={"seed": 1, "data": {"limit": 4}})
    new = {"seed": 1, "data": {"limit": 4, "sample_seed": None, "ids_file": None,
                               "split_seed": None}}
    assert rundir.check_run_dir(out, new, "fp", resume=True, overwrite=False) == "resume"
    with pytest.raises(RunDirError, match=r"config differs .* \['data'\]"):
        rundir.check_run_dir(out, {**new, "data": {**new["data"], "sample_seed": 0}}, "fp",
                             resume=True, overwrite=False)
