"""The result cache: per-item scores keyed by (model, adapter hash, metric, subset).

A key is the model's identity (resolved path, revision, engine, dtype), the
adapter's content hash (or none), the metric name and a fingerprint of the subset
(the suite settings that shape the items and the ids/texts of the data). An entry
holds the per-item rows; aggregation and intervals are recomputed from them, so a
re-run of a suite loads no model at all. Entries are single JSON files written
atomically, so an interrupted run leaves no half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_ENV = "DISTILL_EVAL_CACHE"
# Bump when per-item scoring changes, so old entries are not reused.
# 2: gsm8k rows record the stop reason (truncated), reference_ppl rows nll_mean.
CACHE_VERSION = 2


def fingerprint(parts: Any) -> str:
    """Short stable hash of JSON-able data (cache keys, data subsets)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "distill" / "eval"


class ResultCache:
    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model: dict[str, Any], adapter: str | None, metric: str, subset: str) -> dict[str, Any]:
        return {"version": CACHE_VERSION, "model": model, "adapter": adapter,
                "metric": metric, "subset": subset}

    def _path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.root / key["metric"] / f"{digest[:32]}.json"

    def get(self, key: dict[str, Any]) -> list[dict[str, Any]] | None:
        if not self.enabled:
            self.misses += 1
            return None
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            self.misses += 1
            return None
        if entry.get("key") != key:  # a hash collision or a stale format
            self.misses += 1
            return None
        self.hits += 1
        return entry["items"]

    def put(self, key: dict[str, Any], items: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"key": key, "items": items}, f, ensure_ascii=False)
        os.replace(tmp, path)
