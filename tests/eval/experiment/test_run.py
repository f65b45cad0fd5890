"""``distill-eval experiment`` from the CLI: bad input fails before any work, and the
smoke experiment end to end (killed mid-stage, resumed, then re-run with nothing to redo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval.cli import main as eval_main
from tests.conftest import REPO_ROOT

REPO = REPO_ROOT
SMOKE = REPO / "configs" / "experiments" / "smoke.yaml"


def _run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = eval_main(["experiment", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("overrides", "message"), [
    (["arms.tracee={}"], "did you mean 'trace'"),
    (["task=bbh/no_such_task"], "task:"),
    (["eval.suite=quik"], "did you mean 'quick'"),
    (["teacher.address=127.0.0.1:9", "teacher.ready_timeout_s=1"],
     "teacher.address 127.0.0.1:9: the teacher does not answer"),
])
def test_bad_input_fails_before_any_work(tmp_path, capsys, data_dir, overrides, message):
    out = tmp_path / "exp"
    code, err = _run_cli(["--config", str(SMOKE), "--out", str(out), "--data-dir", str(data_dir),
                          *[a for o in overrides for a in ("--set", o)]], capsys)
    assert code == 2
    assert message in err
    assert not out.exists()


def test_data_dir_without_the_task(tmp_path, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    code, err = _run_cli(["--config", str(SMOKE), "--out", str(tmp_path / "exp"),
                          "--data-dir", str(empty)], capsys)
    assert code == 2
    assert f"data_dir {empty}: no gsm8k train split" in err
    assert not (tmp_path / "exp").exists()


# ----------------------------------------------------------------------------- end to end


def _experiment(out: Path, data_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "DISTILL_EVAL_CACHE": str(out.parent / "global-cache")}
    return subprocess.Popen(
        [sys.executable, "-m", "eval.cli", "experiment", "--config", str(SMOKE), "--out",
         str(out), "--data-dir", str(data_dir), "--quiet"],
        cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc: subprocess.Popen, done, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None:
            raise AssertionError(f"the experiment ended (rc {proc.returncode}) before the "
                                 f"kill point:\n{proc.stdout.read()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("kill point not reached in time")
        time.sleep(0.1)


def _snapshot(out: Path) -> dict[str, int]:
    """mtime of every file a stage writes (status.json / experiment.json aside)."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and p.name not in ("status.json", "experiment.json")}


@pytest.mark.slow
def test_smoke_experiment_killed_resumed_and_cached(tmp_path, data_dir, test_model_dir):
    out = tmp_path / "smoke"
    # 1. Kill it mid-training: once the first run has a checkpoint, before it completes.
    proc = _experiment(out, data_dir)
    first_run = out / "runs" / "ground_truth"

    def mid_training() -> bool:
        return (any(first_run.glob("checkpoints/checkpoint-*/trainer_state.json"))
                and not json.loads((first_run / "manifest.json").read_text()).get("completed"))

    _wait_for(proc, mid_training)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (data,) = (out / "data").glob("rewrite-student*")
    assert (data / "summary.json").is_file()  # the generate stage finished
    status = json.loads((out / "status.json").read_text())
    assert status["stage"] == "train" and status["state"] == "running"

    # 2. Resume: generation is not redone, the killed run continues, the rest runs.
    proc = _experiment(out, data_dir)
    log = proc.communicate(timeout=1800)[0]
    assert proc.returncode == 0, log[-4000:]
    record = json.loads((out / "experiment.json").read_text())
    states = {u["unit"]: u["state"] for u in record["units"]}
    assert states[f"data/{data.name}"] == "cached"
    assert states["runs/ground_truth"] == "resumed"
    assert states["runs/rewrite"] == "ran"
    assert states["runs/ground_truth/eval/smoke"] == "ran"
    assert states["report"] == "ran"
    trainer_state = json.loads(
        (first_run / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert trainer_state["global_step"] == 2
    report = (out / "report" / "report.md").read_text()
    for arm in ("ground_truth", "rewrite", "base (smollm2-135m-instruct)"):
        assert arm in report
    assert "| arm " in log and "report: " in log  # the headline table and where it is
    assert (out / "config.yaml").read_text().startswith("# distill-eval experiment --config")
    for run in ("ground_truth", "rewrite"):
        results = json.loads((out / "runs" / run / "eval" / "smoke" / "results.json").read_text())
        assert results["adapter"]["run_dir"] == str(out / "runs" / run)
        assert "gsm8k/strict_match" in results["metrics"]

    # 3. A second complete run redoes nothing and rewrites no file.
    before = _snapshot(out)
    proc = _experiment(out, data_dir)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-4000:]
    record = json.loads((out / "experiment.json").read_text())
    assert {u["state"] for u in record["units"]} == {"cached"}, record["units"]
    assert _snapshot(out) == before
