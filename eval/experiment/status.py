"""The live status: where the experiment is, printed and kept in ``status.json``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

STAGES = ("generate", "train", "eval", "compare")


class LiveView:
    """The stage, unit and progress: printed as it changes and kept in status.json.

    Each job below draws its own progress bar (examples generated, training steps,
    items evaluated); this is the line above them saying where the experiment is.
    """

    def __init__(self, out: Path, name: str, quiet: bool = False):
        self.out = out
        self.name = name
        self.quiet = quiet
        self.started = time.monotonic()
        self.units: list[dict[str, Any]] = []
        self.status: dict[str, Any] = {"experiment": name, "state": "running", "stage": None,
                                       "unit": None, "progress": None, "pid": os.getpid()}

    def _write(self) -> None:
        self.status["elapsed_s"] = round(time.monotonic() - self.started, 1)
        write_json(self.out / "status.json", self.status)

    def stage(self, index: int, stage: str, total: int) -> None:
        self.status.update(stage=stage, unit=None, progress=[0, total])
        self._write()
        self.say(f"stage {index}/{len(STAGES)} {stage}: {total} unit(s)")

    def start(self, unit: str, what: str) -> float:
        self.status["unit"] = unit
        self._write()
        self.say(f"  {self.status['stage']} ▸ {unit}: {what}")
        return time.monotonic()

    def finish(self, unit: str, state: str, started: float, **extra: Any) -> None:
        seconds = round(time.monotonic() - started, 1)
        self.units.append({"stage": self.status["stage"], "unit": unit, "state": state,
                           "seconds": seconds, **extra})
        self.status["progress"][0] += 1
        self._write()
        if state != "cached":
            self.say(f"  {self.status['stage']} ▸ {unit}: {state} in {duration(seconds)}")

    def cached(self, unit: str, why: str) -> None:
        self.units.append({"stage": self.status["stage"], "unit": unit, "state": "cached",
                           "seconds": 0.0, "why": why})
        self.status["progress"][0] += 1
        self._write()
        self.say(f"  {self.status['stage']} ▸ {unit}: cached ({why})")

    def done(self, state: str = "done") -> None:
        self.status.update(state=state, stage=None, unit=None)
        self._write()

    def say(self, line: str) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        elapsed = duration(time.monotonic() - self.started)
        tqdm.write(f"[{self.name} {elapsed}] {line}", file=sys.stderr)


def duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` whole or not at all (a watcher never reads half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n",
                   encoding="utf-8")
    tmp.replace(path)
