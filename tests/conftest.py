"""Shared fixtures: the real test model, the benchmark data, real teacher servers."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
ENGINES = ["hf", "vllm"] if HAS_VLLM else ["hf"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark data: $DISTILL_DATA_DIR or ../shared/data beside the repo."""
    path = Path(os.environ.get("DISTILL_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"benchmark data not found at {path}")
    return path


@pytest.fixture(scope="session")
def test_model_dir() -> Path:
    """The real small model (smollm2-135m-instruct), pulled into the cache if needed."""
    override = os.environ.get("DISTILL_TEST_MODEL")
    if override:
        return Path(override)
    from teacher import models

    return Path(models.resolve(models.TEST_MODEL))
