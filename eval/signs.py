"""The small-data guide's warning signs, computed per run, and how much of a run's
training text is not the human reference.

Each sign is a rule on numbers the run already has (its loss history, its eval
results, its run directory) and states the number that set it off, so a reader can
judge the flag. The thresholds are the guide's where it gives one (training-data
perplexity under the base above 5); the others are named constants below, chosen to
flag what the guide describes and printed beside every flag.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Training data the base finds this surprising is far from what the model would say.
TRAIN_PPL_MAX = 5.0
# Validation minus train loss growing by more than this (nats) from the first to the
# last evaluation: the model fits the training set and stops generalising.
GAP_GROWTH_MAX = 0.1
# A train loss whose total movement is more than this many times its net descent is
# oscillating (a monotone descent scores 1); needs OSCILLATION_MIN_POINTS logged steps.
OSCILLATION_RATIO_MAX = 3.0
OSCILLATION_MIN_POINTS = 5
# Over-memorization (Ruan et al. 2025): test-reference perplexity up by more than this
# share while accuracy holds (falls by no more than ACCURACY_HOLD_PTS points).
REFERENCE_PPL_RISE_MAX = 0.10
ACCURACY_HOLD_PTS = 3.0


@dataclass(frozen=True)
class Sign:
    """One warning sign that fired: which, the number that fired it, and the rule."""

    sign: str  # train_ppl, growing_gap, oscillating_loss, over_memorization, memorization
    value: float
    threshold: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _value(est: Any) -> float | None:
    if isinstance(est, Mapping):
        est = est.get("value")
    if isinstance(est, int | float) and not isinstance(est, bool) and math.isfinite(est):
        return float(est)
    return None


def train_ppl_sign(train_ppl: Mapping[str, Any] | None) -> Sign | None:
    """Training-data perplexity under the base above TRAIN_PPL_MAX."""
    value = _value(train_ppl)
    if value is None or value <= TRAIN_PPL_MAX:
        return None
    ci = (train_ppl or {}).get("ci") or [None, None]
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if None not in ci else ""
    return Sign("train_ppl", value, TRAIN_PPL_MAX,
                f"training-data perplexity under the base {value:.2f}{interval} > "
                f"{TRAIN_PPL_MAX:g}: the data are far from what the model would say")


def _losses(points: Sequence[Mapping[str, Any]]) -> list[tuple[float, float]]:
    out = []
    for p in points:
        loss, step = _value(p.get("loss")), _value(p.get("step"))
        if loss is not None and step is not None:
            out.append((step, loss))
    return sorted(out)


def gaps(history: Mapping[str, Any]) -> list[tuple[float, float]]:
    """(step, validation loss - mean train loss logged since the previous evaluation)."""
    train, val = _losses(history.get("train") or []), _losses(history.get("eval") or [])
    out, previous = [], -math.inf
    for step, loss in val:
        window = [t for s, t in train if previous < s <= step]
        previous = step
        if window:
            out.append((step, loss - math.fsum(window) / len(window)))
    return out


def growing_gap_sign(history: Mapping[str, Any] | None) -> Sign | None:
    """The train/val gap grows by more than GAP_GROWTH_MAX over the evaluations."""
    g = gaps(history or {})
    if len(g) < 2:
        return None
    growth = g[-1][1] - g[0][1]
    if growth <= GAP_GROWTH_MAX:
        return None
    return Sign("growing_gap", growth, GAP_GROWTH_MAX,
                f"val − train loss grew {g[0][1]:+.3f} → {g[-1][1]:+.3f} nats over "
                f"{len(g)} evaluations (+{growth:.3f} > {GAP_GROWTH_MAX:g}): overfitting")


def oscillation(history: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """(total movement, net descent, their ratio) of the train loss; None: too few steps."""
    losses = [loss for _, loss in _losses(history.get("train") or [])]
    if len(losses) < OSCILLATION_MIN_POINTS:
        return None
    total = math.fsum(abs(b - a) for a, b in itertools.pairwise(losses))
    net = losses[0] - losses[-1]
    return total, net, (total / net if net > 0 else math.inf)


def oscillating_loss_sign(history: Mapping[str, Any] | None) -> Sign | None:
    """The train loss moves more than OSCILLATION_RATIO_MAX times its net descent."""
    osc = oscillation(history or {})
    if osc is None:
        return None
    total, net, ratio = osc
    if ratio <= OSCILLATION_RATIO_MAX or total == 0:
        return None
    shown = "no net descent" if math.isinf(ratio) else f"ratio {ratio:.1f}"
    return Sign("oscillating_loss", ratio, OSCILLATION_RATIO_MAX,
                f"train loss moved {total:.3f} nats in all for {net:+.3f} of net descent "
                f"({shown} > {OSCILLATION_RATIO_MAX:g}): learning rate or batch too noisy")


def over_memorization_sign(checkpoints: Sequence[Mapping[str, Any]] | None,
                           reference_ppl: Mapping[str, Any] | None = None,
                           target_gain: Mapping[str, Any] | None = None,
                           accuracy_key: str = "gsm8k/flexible_extract",
                           ppl_key: str = "reference_ppl/gsm8k") -> Sign | None:
    """Test-reference perplexity up by more than REFERENCE_PPL_RISE_MAX while accuracy
    holds: from the first to the last checkpoint where checkpoints were evaluated, else
    the tuned model against the base. ``accuracy_key``: the gsm8k metric's headline,
    the accuracy the runner records per checkpoint."""
    points = sorted((c for c in checkpoints or []
                     if _value(c.get(accuracy_key)) is not None
                     and _value(c.get(ppl_key)) is not None), key=lambda c: c.get("step") or 0)
    if len(points) >= 2:
        first, last = points[0], points[-1]
        ppl0, ppl1 = _value(first[ppl_key]), _value(last[ppl_key])
        acc0, acc1 = _value(first[accuracy_key]) or 0.0, _value(last[accuracy_key]) or 0.0
        acc_change: float | None = 100 * (acc1 - acc0)
        where = f"from step {first.get('step')} to {last.get('step')}"
    else:
        ppl1 = _value(reference_ppl)
        base = (reference_ppl or {}).get("base")
        ppl0 = _value(base)
        acc_change = _value(target_gain)  # points
        where = "against the base"
    if ppl0 is None or ppl1 is None or acc_change is None or ppl0 <= 0:
        return None
    rise = ppl1 / ppl0 - 1
    if rise <= REFERENCE_PPL_RISE_MAX or acc_change < -ACCURACY_HOLD_PTS:
        return None
    return Sign("over_memorization", rise, REFERENCE_PPL_RISE_MAX,
                f"test-reference perplexity {ppl0:.3f} → {ppl1:.3f} (+{100 * rise:.1f}% > "
                f"{100 * REFERENCE_PPL_RISE_MAX:g}%) {where} while accuracy held "
                f"({acc_change:+.1f} pts ≥ −{ACCURACY_HOLD_PTS:g})")


def memorization_signs(memorization: Mapping[str, Any] | None, did: bool) -> list[Sign]:
    """Each memorization measure whose increase over the base has an interval above 0."""
    out = []
    what = "DiD (trained − held-out controls)" if did else "increase on trained items"
    for setting, measures in sorted((memorization or {}).items()):
        for name, est in sorted((measures or {}).items()):
            value = _value(est)
            ci = (est or {}).get("ci") or [None, None]
            if value is None or ci[0] is None or ci[0] <= 0:
                continue
            unit, digits = ("nats", 3) if est.get("unit") == "nats" else ("pts", 1)
            out.append(Sign("memorization", value, 0.0,
                            f"memorization {what} {setting}/{name} {value:+.{digits}f} {unit} "
                            f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}], interval above 0"))
    return out


def warning_signs(arm: Mapping[str, Any]) -> list[Sign]:
    """Every sign that fires for one compared run (eval.compare's arm entry)."""
    history = arm.get("loss_history") or {}
    signs = [train_ppl_sign(arm.get("train_ppl")), growing_gap_sign(history),
             oscillating_loss_sign(history),
             over_memorization_sign(arm.get("checkpoints"), arm.get("reference_ppl"),
                                    arm.get("target_gain"))]
    return [s for s in signs if s is not None] + memorization_signs(
        arm.get("memorization"), bool(arm.get("memorization_did")))


# ----------------------------------------------------------------------------- data


def responses_differ(run: Any) -> dict[str, Any] | None:
    """How many of a run's training responses differ from the human references
    (``teacher.core.rundir.RunDir``): {"differ", "n", "share"}; None where unknown."""
    from teacher.core.records import iter_records, output_shards
    from teacher.core.rundir import RunDirError

    try:
        train = run.examples("train")
    except RunDirError:
        return None
    data = run.manifest.get("data") or {}
    n = len(train)
    if data.get("kind") == "ground_truth" or data.get("field") == "reference":
        return {"differ": 0, "n": n, "share": 0.0 if n else None}
    try:
        references = {r.id: r.reference for p in output_shards(data.get("path") or "")
                      for r in iter_records(p)
                      if data.get("mode") is None or r.mode == data["mode"]}
    except (FileNotFoundError, ValueError):
        return None
    known = [ex for ex in train if ex.id in references]
    if len(known) < n:
        return None
    differ = sum(ex.response.strip() != references[ex.id].strip() for ex in train)
    return {"differ": differ, "n": n, "share": differ / n if n else None}
