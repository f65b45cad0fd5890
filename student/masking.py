"""Token-level loss shaping on TRL's tokenized dataset (``input_ids`` + ``labels``).

* Selective Token Masking (Wu et al. 2025): the per-token log-probabilities of the
  target tokens under the *base* model are computed once (one batched
  teacher-forced pass) and cached; a target token whose perplexity
  ``exp(-logprob)`` exceeds the threshold gets label -100.
* Distilling step-by-step's two targets: each target token is marked as answer
  (the response's last line) or rationale, so the loss can weight them.
* Per-example NLL (mean over target tokens), for the easy-to-hard curriculum when
  the teacher recorded none.

Label position ``t`` is predicted from position ``t - 1``; logprob lists hold one
entry per position whose label is not -100, in order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

IGNORE = -100


def target_positions(labels: Sequence[int]) -> list[int]:
    return [t for t, label in enumerate(labels) if label != IGNORE]


def mask_high_perplexity(labels: Sequence[int], logprobs: Sequence[float],
                         threshold: float) -> list[int]:
    """``labels`` with exactly the target tokens of perplexity > ``threshold`` set to -100."""
    positions = target_positions(labels)
    if len(positions) != len(logprobs):
        raise ValueError(f"{len(logprobs)} logprobs for {len(positions)} target tokens")
    out = list(labels)
    for t, lp in zip(positions, logprobs, strict=True):
        if math.exp(-lp) > threshold:
            out[t] = IGNORE
    return out


def answer_mask(completion_ids: Sequence[int], response: str, answer_from: int,
                decode: Any) -> list[int]:
    """1 for the completion tokens from the one that carries character ``answer_from``
    of ``response`` on (the answer and the end-of-turn tokens), 0 before (rationale)."""
    lo, hi = 0, len(completion_ids)
    # The smallest i whose prefix decodes past the answer's first character.
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode(list(completion_ids[: mid + 1]))) > answer_from:
            hi = mid
        else:
            lo = mid + 1
    return [0] * lo + [1] * (len(completion_ids) - lo)


def sequence_key(model_revision: str, rows: Sequence[dict[str, Any]]) -> str:
    """Cache key: the base model and the exact token ids and target positions scored."""
    h = hashlib.sha256(model_revision.encode())
    for row in rows:
        h.update(json.dumps([row["id"], row["input_ids"], target_positions(row["labels"])])
                 .encode())
    return h.hexdigest()[:16]


def score_targets(model: Any, rows: Sequence[dict[str, Any]], pad_id: int,
                  batch_size: int = 4) -> list[list[float]]:
    """Log-probability of each target token under ``model`` (teacher-forced, batched)."""
    import torch

    device = next(model.parameters()).device
    results: list[list[float]] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            width = max(len(r["input_ids"]) for r in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for i, r in enumerate(batch):
                ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
                attention[i, : len(r["input_ids"])] = 1
            with torch.no_grad():
                logits = model(input_ids=ids.to(device),
                               attention_mask=attention.to(device)).logits.float()
            for i, r in enumerate(batch):
                positions = [t for t in target_positions(r["labels"]) if t > 0]
                prev = torch.tensor([t - 1 for t in positions], device=logits.device)
                token = ids[i, positions].to(logits.device)
                lp = torch.log_softmax(logits[i, prev], dim=-1).gather(1, token[:, None])[:, 0]
                values = lp.tolist()
                if target_positions(r["labels"])[:1] == [0]:
                    values.insert(0, 0.0)  # an unpredictable first token: never masked
                results.append(values)
    finally:
        model.train(was_training)
    return results


def cached_scores(cache_file: Path, key: str, compute: Any) -> list[list[float]]:
    """Load scores for ``key`` from ``cache_file``, or compute and store them atomically."""
    if cache_file.is_file():
        try:
            cached = json.loads(cache_file.read_text())
            if cached.get("key") == key:
                return cached["logprobs"]
        except (OSError, ValueError):
            pass  # a damaged cache is recomputed
    scores = compute()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "logprobs": scores}))
    tmp.replace(cache_file)
    return scores


def mean_nll(logprobs: Sequence[float]) -> float:
    return -sum(logprobs) / max(len(logprobs), 1)
