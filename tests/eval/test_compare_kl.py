"""The comparison of kl_forgetting rows between arms: constructed runs (three seeds per
arm, items.jsonl as the runner records it) with a known difference, and without one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from eval.compare import compare
from eval.stats import mean_difference, paired_difference
from tests.eval.test_compare import record_arm

SUITE = {"metrics": ["kl_forgetting"], "kl_forgetting": {"sources": ["wikitext", "bbh"]},
         "confidence": 0.95, "bootstrap_resamples": 500, "seed": 0}
CHUNKS, BBH_ITEMS = 16, 12
# Seed k moves every arm by the same run-to-run effect (paired by seed: the same split,
# init and data order), and each chunk by its own offset: both cancel in arm − arm.
SEED_EFFECT = {1: -0.004, 2: 0.0, 3: 0.004}
GT_KL = 0.05  # ground truth's mean KL(base ‖ tuned) on WikiText-2, nats per token


def chunk_noise(i: int) -> float:
    """A fixed offset per chunk, mean 0 over the 16 chunks (sd ~0.003)."""
    return 0.003 * math.sin(2 * math.pi * (i + 0.5) / CHUNKS) * math.sqrt(2)


def kl_arm(root: Path, name: str, *, kind: str, seed: int, wiki_shift: float = 0.0,
           bbh_shift: float = 0.0, wiki_noise: float = 0.0) -> Path:
    """A run whose eval recorded kl_forgetting rows (subject "model" only: the rows
    are already tuned vs base): ground truth's rows plus ``wiki_shift`` on every
    WikiText chunk and ``bbh_shift`` on every BBH item (NLL change and flip rate are
    0.5 and 2 times the KL), and ``wiki_noise`` alternately added to and taken from
    the chunks' KL (mean 0 in every seed)."""
    run = record_arm(root, name, gain=0.0, n_train=30, kind=kind,
                     mode=None if kind == "ground_truth" else "trace")
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "seed": seed}))
    out = run / "eval" / "quick"
    results = json.loads((out / "results.json").read_text())
    results["suite"]["config"] = SUITE
    results["summary"]["forgetting"] = {}  # the KL line comes from the items
    (out / "results.json").write_text(json.dumps(results))
    rows = []
    for i in range(CHUNKS):
        kl = (GT_KL + SEED_EFFECT[seed] + chunk_noise(i) + 0.01 * (i % 4 - 1.5) + wiki_shift
              + wiki_noise * (1 if i % 2 else -1))
        rows.append({"metric": "kl_forgetting", "subject": "model", "id": f"wiki{i}#0",
                     "source": "wikitext", "tokens": 256, "kl": kl,
                     "nll_change": 0.5 * kl, "flip_rate": 2 * kl, "kl_max": 10 * kl})
    for i in range(BBH_ITEMS):
        kl = 0.03 + SEED_EFFECT[seed] + 0.005 * (i % 3 - 1) + bbh_shift
        rows.append({"metric": "kl_forgetting", "subject": "model", "id": f"bbh{i}",
                     "source": "bbh", "subtask": "navigate", "tokens": 120, "kl": kl,
                     "nll_change": 0.5 * kl, "flip_rate": 2 * kl, "kl_max": 10 * kl})
    (out / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def arms(root: Path, **trace: float) -> list[Path]:
    """Ground truth and trace under seeds 1-3; trace's rows shifted as ``trace`` says."""
    runs = []
    for seed in SEED_EFFECT:
        runs.append(kl_arm(root, f"ground_truth-seed{seed}", kind="ground_truth", seed=seed))
        runs.append(kl_arm(root, f"trace-seed{seed}", kind="teacher", seed=seed, **trace))
    return runs


def comparisons(report: dict) -> dict:
    return {(c["arm"], c["vs"], c["measure"]): c for c in report["comparisons"]}


def test_a_known_difference_in_kl_gives_its_interval_and_a_claim(tmp_path):
    report = compare(arms(tmp_path, wiki_shift=-0.02, bbh_shift=0.01, wiki_noise=0.004),
                     tmp_path / "report")
    by, md = comparisons(report), report["markdown"]
    # Trace forgets 0.02 nats/token less on WikiText, ±0.004 per chunk: paired by chunk
    # and seed, the seeds' effect and the chunks' offsets cancel and the difference is
    # -0.02 with the interval of a mean of 16 chunks of ±0.004 (SE 0.001): -0.02 ± 0.002.
    wiki = by[("trace", "ground_truth", "kl_forgetting/wikitext/kl")]
    assert wiki["value"] == pytest.approx(-0.02, abs=1e-12)
    assert wiki["seeds"] == 3 and wiki["n"] == CHUNKS
    assert wiki["method"].startswith("hierarchical")
    assert wiki["ci"] == pytest.approx([-0.02 - 0.00196, -0.02 + 0.00196], abs=6e-4)
    assert wiki["mde"] == pytest.approx((1.96 + 0.8416) * 0.001, rel=0.2)
    assert ("- trace forgets less than ground_truth: kl_forgetting/wikitext/kl −0.0200 [−0.02"
            in md)
    assert [s["seed"] for s in wiki["seed_differences"]] == [1, 2, 3]
    # On BBH prompts trace forgets more (+0.01), on all three measures (NLL change and
    # flip rate scale with KL here: 0.5 and 2 times).
    for field, scale in (("kl", 1.0), ("nll_change", 0.5), ("flip_rate", 2.0)):
        d = by[("trace", "ground_truth", f"kl_forgetting/bbh/{field}")]
        assert d["value"] == pytest.approx(0.01 * scale, abs=1e-12) and d["ci"][0] > 0
        assert d["mde"] is None  # the same +0.01 on every item: no spread to detect by
        assert not d["higher_is_better"]
    assert "- trace forgets more than ground_truth: kl_forgetting/bbh/kl 0.0" in md

    # Against the base: the rows are the difference already; ground truth's mean KL
    # over seeds is 0.05, with an interval from the seeds' spread (±0.004) and the
    # chunks' (sd ~0.012 over 16).
    gt = by[("ground_truth", "base", "kl_forgetting/wikitext/kl")]
    assert gt["value"] == pytest.approx(GT_KL, abs=1e-12)
    lo, hi = gt["ci"]
    assert 0.038 < lo < GT_KL < hi < 0.062 and hi - lo > 0.005
    # Its detectable effect: (1.96 + 0.84) x the bootstrap SE, here ~0.003-0.004.
    assert 0.006 < gt["mde"] < 0.02
    assert "- ground_truth forgets more than base: kl_forgetting/wikitext/kl 0.05" in md

    # The one forgetting axis: KL on WikiText-2, in the table (first forgetting column,
    # per run: that seed's mean over chunks) and on the Pareto plot.
    assert report["pareto_axis"] == "kl_wikitext"
    table = md.split("\n\n")[2]
    header = [c.strip() for c in table.splitlines()[0].split("|")]
    column = "forgetting kl_wikitext (KL(base ‖ tuned), nats per token)"
    assert column in header
    assert next(h for h in header if h.startswith("forgetting")) == column
    run = next(a for a in report["arms"] if a["name"] == "trace-seed3")
    kl = run["forgetting"]["kl_wikitext"]
    assert kl["value"] == pytest.approx(GT_KL + 0.004 - 0.02, abs=1e-12)
    assert kl["unit"] == "KL(base ‖ tuned), nats per token" and kl["ci"][0] < kl["value"]
    assert "*kl_wikitext* (the Pareto plot's axis)" in md
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 10_000


def test_no_difference_cannot_tell_and_says_what_was_detectable(tmp_path):
    # Trace differs from ground truth by noise alone: ±0.006 per chunk, mean 0 in
    # every seed.
    report = compare(arms(tmp_path, wiki_noise=0.006), tmp_path / "report")
    by, md = comparisons(report), report["markdown"]
    wiki = by[("trace", "ground_truth", "kl_forgetting/wikitext/kl")]
    assert wiki["value"] == pytest.approx(0.0, abs=1e-12)
    assert wiki["ci"][0] < 0 < wiki["ci"][1]
    # The spread of a mean of 16 chunks of ±0.006 is 0.0015: detectable ~0.004.
    assert 0.002 < wiki["mde"] < 0.008
    line = next(x for x in md.splitlines()
                if x.startswith("- trace vs ground_truth: the data cannot tell on "
                                "kl_forgetting/wikitext/kl"))
    assert f"could have detected ±{wiki['mde']:.4f}" in line and "n=16 × 3 seeds" in line
    # No difference at all (the bbh rows are equal): no variation, no claim.
    bbh = by[("trace", "ground_truth", "kl_forgetting/bbh/kl")]
    assert bbh["value"] == pytest.approx(0.0, abs=1e-12) and bbh["mde"] is None
    assert not any(x.startswith("- trace forgets") and "than ground_truth" in x
                   for x in md.splitlines())


def test_mean_of_paired_rows_equals_the_paired_difference():
    # Rows that are already differences (a - b per item) give the same value and the
    # same interval as pairing the two sides, seed by seed and item by item.
    a = [[0.1 * i + 0.01 * s for i in range(12)] for s in range(3)]
    b = [[0.05 * i * i / 12 for i in range(12)] for _ in range(3)]
    mean = lambda xs: math.fsum(xs) / len(xs)  # noqa: E731
    paired = paired_difference(list(zip(a, b, strict=True)), mean, crossed=True, seed=3)
    rows = mean_difference([[x - y for x, y in zip(sa, sb, strict=True)]
                            for sa, sb in zip(a, b, strict=True)], mean, crossed=True, seed=3)
    assert rows.value == pytest.approx(paired.value, abs=1e-12)
    assert (rows.low, rows.high) == pytest.approx((paired.low, paired.high), abs=1e-12)
    assert rows.mde == pytest.approx(paired.mde) and rows.seeds == 3 and rows.n == 12
    with pytest.raises(ValueError):
        mean_difference([[]], mean)
