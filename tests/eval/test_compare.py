"""The comparison report from recorded results, and bad inputs (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.cli import main
from eval.compare import CompareError, compare
from eval.runner import SCHEMA
from teacher.core.rundir import RunDir, RunDirError

PNG = b"\x89PNG\r\n\x1a\n"


def est(value: float, half: float = 1.0, n: int = 50) -> dict:
    return {"value": value, "ci": [value - half, value + half], "n": n}


def record_arm(root: Path, name: str, *, gain: float, n_train: int, kind: str = "teacher",
               mode: str | None = "trace", lr: float = 2e-4, forget: float = 1.0,
               mem: float = 2.0) -> Path:
    """A run dir (manifest + loss history) and its recorded results.json."""
    run = root / name
    run.mkdir()
    data = {"kind": kind, "task": "gsm8k", **({"mode": mode} if mode else {})}
    manifest = {
        "base_model": "smollm2-135m-instruct", "data": data, "completed": True,
        "config": {"training": {"max_steps": 100, "learning_rate": lr}, "lora": {"r": 8},
                   "data": {"limit": n_train, "path": f"/data/{name}"}},
        "num_train_examples": n_train, "train_tokens": 300 * n_train, "wall_time_s": 60.0,
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "loss_history.json").write_text(json.dumps({
        "train": [{"step": s, "epoch": s / 50, "loss": 1.5 - s / 200} for s in (10, 50, 100)],
        "eval": [{"step": 50, "epoch": 1.0, "loss": 1.4}, {"step": 100, "epoch": 2.0, "loss": 1.3}],
    }))
    base_acc = 0.20
    results = {
        "schema": SCHEMA,
        "model": {"name": "smollm2-135m-instruct", "path": "/m", "revision": "r1"},
        "adapter": {"run_dir": str(run), "hash": name, "data": data, "completed": True},
        "suite": {"name": "quick", "config": {}},
        "metrics": {
            "gsm8k/strict_match": {**est(base_acc + gain / 100, 0.05), "group": "target",
                                   "higher_is_better": True, "base": est(base_acc, 0.05)},
            "train_ppl": {**est(3.0 if kind == "teacher" else 6.0, 0.2), "group": "train_data",
                          "higher_is_better": False},
            "fit/gap": {"value": -0.05, "ci": [None, None], "n": 1, "group": "fit",
                        "higher_is_better": False},
        },
        "summary": {
            "target_gain": {"unit": "accuracy points", **est(gain, 2.0)},
            "forgetting": {"bbh": est(forget), "wikitext": est(forget / 2),
                           "overall": est(forget * 0.75)},
            "memorization_increase": {"question": {"rouge_l_above": est(mem)},
                                      "half_response": {"rouge_l_above": est(mem * 2)}},
        },
        "checkpoints": [{"step": 50, "checkpoint": "checkpoint-50",
                         "gsm8k/strict_match": est(0.3, 0.05), "reference_ppl/gsm8k": est(2.5)}],
    }
    out = run / "eval" / "quick"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps(results))
    return run


@pytest.fixture
def arms(tmp_path: Path) -> list[Path]:
    return [
        record_arm(tmp_path, "ground-truth", gain=5.0, n_train=100, kind="ground_truth",
                   mode=None, forget=2.0, mem=6.0),
        record_arm(tmp_path, "teacher-100", gain=8.0, n_train=100),
        record_arm(tmp_path, "teacher-150", gain=9.0, n_train=150, forget=0.5),
        record_arm(tmp_path, "rewrite-lr", gain=12.0, n_train=100, mode="rewrite", lr=1e-3),
    ]


def test_compare_table_flags_saturation_and_plots(arms, tmp_path):
    out = tmp_path / "report"
    report = compare(arms, out)
    md = (out / "report.md").read_text()
    names = [a["name"] for a in report["arms"]]
    assert names[0].startswith("base (") and names[1:] == [p.name for p in arms]
    # Best in bold: the largest gain (12.0) and the smallest forgetting (teacher-150).
    main_table = md.split("\n\n")[2]
    row = {line.split("|")[1].strip(): line for line in main_table.splitlines()}
    assert "**12.0**" in row["rewrite-lr"] and "**12.0**" not in row["teacher-100"]
    assert "**0.38**" in row["teacher-150"]  # overall forgetting 0.5 * 0.75
    assert "9.0 [7.0, 11.0]" in row["teacher-150"]  # value with its interval
    # Arms differing in more than data are flagged, naming the setting.
    flagged = {f["arm"]: {d["setting"] for d in f["differs"]} for f in report["fairness_flags"]}
    assert flagged == {"teacher-150": {"num_train_examples"},
                       "rewrite-lr": {"training.learning_rate"}}
    assert "training.learning_rate (0.0002 vs 0.001)" in md
    # Saturation: +50% teacher data bought 1 point (< 3): saturated.
    curve = report["saturation"]["teacher/trace"]
    assert [p["examples"] for p in curve] == [100, 150]
    assert curve[1]["saturated"] and curve[1]["vs_previous"]["gain_change"] == pytest.approx(1.0)
    assert "(saturated)" in md
    # Over-memorization per checkpoint is tabled.
    assert "## Over-memorization by checkpoint" in md
    # Plots are real PNGs, linked from the report.
    assert set(report["plots"]) == {"pareto.png", "memorization.png", "loss_curves.png",
                                    "saturation.png"}
    for name in report["plots"]:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
        assert f"({name})" in md
    saved = json.loads((out / "report.json").read_text())
    assert saved["saturation"]["teacher/trace"][1]["saturated"] is True


def test_compare_cli_and_bad_inputs(arms, tmp_path, capsys):
    assert main(["compare", *map(str, arms[:2]), "--out", str(tmp_path / "r")]) == 0
    assert "| ground-truth" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CompareError, match=r"no results\.json in"):
        compare([empty], tmp_path / "r2")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": ')
    with pytest.raises(CompareError, match=r"bad\.json:1: invalid JSON"):
        compare([bad], tmp_path / "r3")
    assert main(["compare", str(empty), "--out", str(tmp_path / "r4")]) == 2
    assert "error: no results.json" in capsys.readouterr().err


def test_run_dir_without_manifest_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    with pytest.raises(RunDirError, match=r"has no manifest\.json"):
        RunDir(run)
    code = main(["run", "--model", "smollm2-135m-instruct", "--adapter", str(run),
                 "--suite", "smoke", "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    assert "is not a student run directory: it has no manifest.json" in capsys.readouterr().err


def test_bad_run_dir_files_name_file_and_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    (run / "train_examples.jsonl").write_text(
        '{"id": "a", "prompt": [{"role": "user", "content": "q"}], "response": "r"}\n{"id": 3}\n')
    with pytest.raises(RunDirError, match=r"train_examples\.jsonl:2: field 'id'"):
        RunDir(run).examples("train")
    with pytest.raises(RunDirError, match="not a peft adapter"):
        RunDir(run).adapter_dir()


def test_unknown_suite_and_metric_on_the_command_line(tmp_path, capsys):
    assert main(["run", "--model", "smollm2-135m-instruct", "--suite", "smoek",
                 "--out", str(tmp_path)]) == 2
    assert "did you mean 'smoke'" in capsys.readouterr().err
    assert main(["run", "--model", "smollm2-135m-instruct", "--suite", "smoke",
                 "--metrics", "gsm8k,perplexity", "--out", str(tmp_path)]) == 2
    assert "unknown metric 'perplexity'" in capsys.readouterr().err


def test_seed_spread_groups_runs_of_one_arm():
    from eval.compare import _seed_spread

    def arm(name: str, acc: float | None, gain: float | None = None) -> dict:
        return {"name": name, "is_base": False,
                "accuracy": None if acc is None else {"value": acc},
                "target_gain": None if gain is None else {"value": gain}}

    rows = _seed_spread([
        {"name": "base", "is_base": True},
        arm("trace-seed1", 0.2, 10.0), arm("trace-seed2", 0.4, 30.0), arm("trace-seed3", 0.3, 20.0),
        arm("ground_truth-seed1", 0.1), arm("rewrite", 0.5),  # one seed / no seeds: no row
    ])
    assert [r["arm"] for r in rows] == ["trace"]
    (row,) = rows
    assert row["seeds"] == 3
    assert row["accuracy"]["mean"] == pytest.approx(0.3)
    assert row["accuracy"]["sd"] == pytest.approx(0.1)
    assert (row["target_gain"]["min"], row["target_gain"]["max"]) == (10.0, 30.0)
