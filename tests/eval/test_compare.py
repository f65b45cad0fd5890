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
            "gsm8k/flexible_extract": {**est(base_acc + gain / 100, 0.05), "group": "target",
                                       "higher_is_better": True, "base": est(base_acc, 0.05)},
            # The format measure: reported, not the accuracy column.
            "gsm8k/strict_match": {**est(0.02, 0.01), "group": "target",
                                   "higher_is_better": True, "base": est(0.0, 0.01)},
            "gsm8k/truncated": {**est(0.04, 0.01), "group": "target",
                                "higher_is_better": False, "base": est(0.1, 0.01)},
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
                         "gsm8k/flexible_extract": est(0.3, 0.05),
                         "reference_ppl/gsm8k": est(2.5)}],
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
    # No items.jsonl: no paired arm-vs-arm differences, so nothing is bold (a best by
    # point estimate alone is not a finding), and the report says why.
    assert "**" not in main_table
    assert "No per-item scores (items.jsonl)" in md
    assert "9.0 [7.0, 11.0]" in row["teacher-150"]  # value with its interval
    # Accuracy (%) with its exact interval from k/n; 0.25 x 50 = 12.5 is no k/n: kept.
    assert "28.0 [16.2, 42.5]" in row["teacher-100"]  # 14/50, Clopper-Pearson
    assert "25.0 [20.0, 30.0]" in row["ground-truth"]  # 12.5/50: the recorded interval
    # Beside the headline (flexible) accuracy: strict match and the share cut off, in %.
    header = [c.strip() for c in main_table.splitlines()[0].split("|")]
    assert header[3:6] == ["gsm8k acc (%)", "strict (%)", "cut off (%)"]
    cells = [c.strip() for c in row["teacher-100"].split("|")]
    assert cells[4].startswith("2.0 [") and cells[5].startswith("4.0 [")  # 1/50, 2/50
    base = [c.strip() for c in main_table.splitlines()[2].split("|")]
    assert base[4].startswith("0.0 [") and base[5].startswith("10.0 [")  # the base's 0/50, 5/50
    # Each forgetting axis in its own unit; no "overall" mean of points and percents.
    assert "forgetting overall" not in md and "forgetting bbh" in md
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


# ----------------------------------------------------------------------------- from items

SUITE = {"metrics": ["gsm8k", "bbh", "wikitext", "memorization"],
         "gsm8k": {"limit": 40}, "bbh": {"subtasks": ["boolean_expressions"], "limit": 60},
         "wikitext": {"limit": 30}, "memorization": {"n": 30, "settings": ["question", "loss"]},
         "confidence": 0.95, "bootstrap_resamples": 300, "seed": 0}


def itemized_arm(root: Path, name: str, *, kind: str, seed: int, bbh_kept: int,
                 bpb_shift: float, memorized: int, learned: float = 0.0) -> Path:
    """A run whose eval recorded items.jsonl: base and tuned rows of every metric.
    bbh: the tuned model keeps ``bbh_kept`` of the base's 50 right answers (of 60);
    wikitext: every document's log-likelihood moves by ``bpb_shift`` bits per byte;
    memorization: ``memorized`` of 30 trained responses reproduced, 2 of 30 controls;
    by loss: trained responses' log-probability up by ``learned``, the controls' by 0.1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    run = record_arm(root, name, gain=0.0, n_train=30, kind=kind,
                     mode=None if kind == "ground_truth" else "trace")
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "seed": seed}))
    out = run / "eval" / "quick"
    results = json.loads((out / "results.json").read_text())
    results["suite"]["config"] = SUITE
    results["summary"]["forgetting"] = {  # the runner's paired-bootstrap lines
        "bbh": {"unit": "accuracy points lost", **est(100 * (50 - bbh_kept) / 60)},
        "wikitext": {"unit": "% more bits per byte", **est(100 * bpb_shift / 0.9)}}
    (out / "results.json").write_text(json.dumps(results))
    rows = []
    for i in range(40):  # gsm8k: base 10/40; tuned the same plus noise
        b = float(i < 10)
        rows += [{"metric": "gsm8k", "subject": "base", "id": f"g{i}", "strict_match": b,
                  "flexible_extract": b},
                 {"metric": "gsm8k", "subject": "model", "id": f"g{i}",
                  "flexible_extract": float(rng.random() < 0.3), "strict_match": b}]
    for i in range(60):
        b = float(i < 50)
        rows += [{"metric": "bbh", "subject": "base", "id": f"b{i}",
                  "subtask": "boolean_expressions", "exact_match": b},
                 {"metric": "bbh", "subject": "model", "id": f"b{i}",
                  "subtask": "boolean_expressions", "exact_match": float(i < bbh_kept)}]
    for i in range(30):
        nbytes = 2000 + 10 * i
        ll = -nbytes * 0.9 * np.log(2) * (1 + 0.1 * rng.standard_normal())
        shift = -bpb_shift * nbytes * np.log(2) * (1 + 0.05 * rng.standard_normal())
        for subject, value in (("base", ll), ("model", ll + shift)):
            rows.append({"metric": "wikitext", "subject": subject, "id": f"w{i}",
                         "loglikelihood": value, "bytes": nbytes, "words": nbytes // 6,
                         "tokens": nbytes // 4})
    for split, hits in (("train", memorized), ("control", 2)):
        for i in range(30):
            for subject, hit in (("base", i < 1), ("model", i < hits)):
                rows.append({"metric": "memorization", "subject": subject, "id": f"{split}{i}",
                             "setting": "question", "split": split, "exact_match": float(hit),
                             "rouge_l_above": float(hit), "rouge_l": float(hit), "lcs_run": 1.0})
    for split, rise in (("train", learned), ("control", 0.1)):
        for i in range(30):
            base = -1.0 - 0.01 * i
            for subject, value in (("base", base),
                                   ("model", base + rise + 0.02 * rng.standard_normal())):
                rows.append({"metric": "memorization", "subject": subject, "id": f"{split}{i}",
                             "setting": "loss", "split": split, "logprob": value, "tokens": 50})
    (out / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_compare_pairs_arms_with_ground_truth_from_items(tmp_path):
    runs = [
        itemized_arm(tmp_path, "ground_truth", kind="ground_truth", seed=42, bbh_kept=30,
                     bpb_shift=0.05, memorized=20, learned=0.5),
        itemized_arm(tmp_path, "trace", kind="teacher", seed=42, bbh_kept=49,
                     bpb_shift=0.002, memorized=3, learned=0.1),
    ]
    report = compare(runs, tmp_path / "report")
    md = report["markdown"]
    assert report["reference_arm"] == "ground_truth"
    by = {(c["arm"], c["vs"], c["measure"]): c for c in report["comparisons"]}
    # bbh: trace kept 49 of the base's right answers, ground truth 30: +19 of 60 items,
    # 19 discordant pairs all one way: Newcombe interval, exact McNemar.
    bbh = by[("trace", "ground_truth", "bbh/exact_match")]
    assert bbh["value"] == pytest.approx(100 * 19 / 60)
    assert bbh["discordant"] == [19, 0] and bbh["p_value"] == pytest.approx(2 / 2 ** 19)
    assert bbh["ci"][0] > 0 and bbh["method"].startswith("Newcombe")
    assert "- trace forgets less than ground_truth: bbh/exact_match 31.7 [" in md
    # wikitext bits per byte (lower is better): trace's shift 0.048 smaller than ground truth's.
    wiki = by[("trace", "ground_truth", "wikitext/bits_per_byte")]
    assert wiki["value"] == pytest.approx(0.002 - 0.05, abs=0.005)
    assert wiki["ci"][1] < 0 and wiki["mde"] > 0
    assert "- trace forgets less than ground_truth: wikitext/bits_per_byte −0.04" in md
    # Memorization DiD vs base: (20 - 1)/30 trained minus (2 - 1)/30 controls = 60 points.
    gt_mem = by[("ground_truth", "base", "memorization/question/rouge_l_above")]
    assert gt_mem["value"] == pytest.approx(100 * (19 - 1) / 30)
    arm_gt = next(a for a in report["arms"] if a["name"] == "ground_truth")
    assert arm_gt["memorization_did"]
    assert arm_gt["memorization"]["question"]["rouge_l_above"]["value"] == pytest.approx(60.0)
    assert "memorization DiD question (pts)" in md
    assert "- trace memorizes less than ground_truth: memorization DiD question/rouge_l_above" in md
    # By loss, in nats (not points): ground truth raised its trained responses'
    # log-probability 0.5 against the controls' 0.1 (DiD 0.4); trace 0.1 against 0.1.
    gt_loss = by[("ground_truth", "base", "memorization/loss/logprob")]
    assert gt_loss["value"] == pytest.approx(0.4, abs=0.02)
    assert gt_loss["ci"][0] > 0.35 and gt_loss["ci"][1] < 0.45
    tr_loss = by[("trace", "ground_truth", "memorization/loss/logprob")]
    assert tr_loss["value"] == pytest.approx(-0.4, abs=0.02) and tr_loss["ci"][1] < 0
    assert arm_gt["memorization"]["loss"]["logprob"]["value"] == pytest.approx(0.4, abs=0.02)
    assert "memorization DiD loss (nats)" in md
    assert "- trace memorizes less than ground_truth: memorization DiD loss/logprob −0.4" in md
    # gsm8k: same base, noisy tuned answers: no claim, with the detectable effect.
    gsm = [line for line in md.splitlines()
           if line.startswith("- trace vs ground_truth: the data cannot tell on gsm8k")]
    assert gsm and "could have detected ±" in gsm[0] and "at n=40" in gsm[0]
    # One seed per arm: the report says the intervals are item variance only.
    assert "One training seed per arm" in md
    # Bold only where the difference excludes zero: trace's bbh forgetting, not gain.
    table = md.split("\n\n")[2]
    row = {line.split("|")[1].strip(): line for line in table.splitlines()}
    cells = [c.strip() for c in row["trace"].split("|")]
    header = [c.strip() for c in table.splitlines()[0].split("|")]
    assert cells[header.index("forgetting bbh (accuracy points lost)")].startswith("**")
    assert "**" not in cells[header.index("target gain (pts)")]
    assert report["pareto_axis"] == "wikitext"


def test_compare_pools_seeds_hierarchically(tmp_path):
    runs = []
    for seed, (gt_kept, tr_kept) in zip((1, 2, 3), ((30, 48), (35, 45), (28, 49)), strict=True):
        runs.append(itemized_arm(tmp_path, f"ground_truth-seed{seed}", kind="ground_truth",
                                 seed=seed, bbh_kept=gt_kept, bpb_shift=0.05, memorized=20))
        runs.append(itemized_arm(tmp_path, f"trace-seed{seed}", kind="teacher", seed=seed,
                                 bbh_kept=tr_kept, bpb_shift=0.01, memorized=3))
    report = compare(runs, tmp_path / "report")
    by = {(c["arm"], c["vs"], c["measure"]): c for c in report["comparisons"]}
    bbh = by[("trace", "ground_truth", "bbh/exact_match")]
    assert bbh["seeds"] == 3 and bbh["method"].startswith("hierarchical")
    assert bbh["value"] == pytest.approx(100 * (18 + 10 + 21) / 3 / 60)
    assert [s["seed"] for s in bbh["seed_differences"]] == [1, 2, 3]
    assert "at n=60 × 3 seeds" in report["markdown"] or bbh["ci"][0] > 0
    assert "One training seed per arm" not in report["markdown"]


@pytest.mark.parametrize("recorded", [True, False])
def test_reference_nll_is_compared_per_item_where_recorded(tmp_path, recorded):
    # Where the rows carry nll_mean, the arms are compared on it item by item; an older
    # items.jsonl without it gives no comparison on it, the rest of the report as before.
    runs = [itemized_arm(tmp_path, name, kind=kind, seed=42, bbh_kept=40, bpb_shift=0.01,
                         memorized=3)
            for name, kind in (("ground_truth", "ground_truth"), ("trace", "teacher"))]
    for k, run in enumerate(runs):
        out = run / "eval" / "quick"
        results = json.loads((out / "results.json").read_text())
        results["suite"]["config"] = {**SUITE, "metrics": [*SUITE["metrics"], "reference_ppl"]}
        (out / "results.json").write_text(json.dumps(results))
        rows = []
        for i in range(20):
            for subject, nll in (("base", 1.0 + i / 20), ("model", 1.0 + i / 20 - 0.1 * (k + 1))):
                row = {"metric": "reference_ppl", "subject": subject, "id": f"r{i}",
                       "loglikelihood": -nll * 50, "tokens": 50}
                rows.append(json.dumps({**row, "nll_mean": nll} if recorded else row))
        (out / "items.jsonl").write_text((out / "items.jsonl").read_text() + "\n".join(rows) + "\n")
    report = compare(runs, tmp_path / "report")
    by = {(c["arm"], c["vs"], c["measure"]): c for c in report["comparisons"]}
    assert ("trace", "ground_truth", "gsm8k/flexible_extract") in by
    nll = by.get(("trace", "ground_truth", "reference_ppl/gsm8k_nll"))
    if not recorded:
        assert nll is None
        return
    # trace's references are 0.1 nats/token likelier than ground truth's, on every item.
    assert nll["value"] == pytest.approx(-0.1) and nll["n"] == 20
    assert nll["ci"][1] < 0
