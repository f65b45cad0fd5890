"""Every shipped YAML starts with the command that runs it and loads with its loader.

The experiment configs are also planned in tests/eval/experiment/test_planner.py; here every
student config, eval suite and accelerate config is checked too, so a re-layout that
breaks a loader (or a key a config uses) fails here rather than in a user's run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

COMMANDS = {
    "configs/accelerate": "# accelerate launch --config_file configs/accelerate/",
    "configs/experiments": "# distill-eval experiment --config configs/experiments/",
    "configs/student": "# distill-student train --config configs/student/",
    "eval/suites": "# distill-eval run ",
}
SHIPPED = sorted(p for folder in COMMANDS for p in (REPO_ROOT / folder).glob("*.yaml"))


def test_every_config_folder_is_covered() -> None:
    found = {str(p.parent.relative_to(REPO_ROOT)) for p in REPO_ROOT.glob("configs/*/*.yaml")}
    assert found <= set(COMMANDS), f"add {found - set(COMMANDS)} to COMMANDS"
    assert len(SHIPPED) >= 10


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_shipped_yaml_starts_with_its_command_and_loads(path: Path) -> None:
    folder = str(path.parent.relative_to(REPO_ROOT))
    first = path.read_text().splitlines()[0]
    assert first.startswith(COMMANDS[folder]), f"{path.name}: first line {first!r}"
    assert str(path.relative_to(REPO_ROOT)) in first or folder == "eval/suites"
    if folder == "configs/student":
        from student.config import load_train_config

        cfg = load_train_config(path)
        assert cfg.model
    elif folder == "eval/suites":
        from eval.suite import load_suite

        suite = load_suite(path)
        assert suite.name == path.stem
    elif folder == "configs/accelerate":
        assert yaml.safe_load(path.read_text())["distributed_type"]
    else:
        from eval.experiment import load_experiment

        assert load_experiment(path).arms
