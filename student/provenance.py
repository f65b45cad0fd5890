"""What a run's manifest records about where and how it ran: versions, commit, costs."""

from __future__ import annotations

import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "distill")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out["python"] = sys.version.split()[0]
    return out


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    # ru_maxrss is in KiB on Linux: the process's peak resident memory.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def dir_size_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 3)


def adapter_size_mb(adapter: Path) -> float:
    """Size of the adapter weights (what is shipped), in MiB."""
    weights = list(adapter.glob("adapter_model.*"))
    return dir_size_mb(adapter) if not weights else round(
        sum(p.stat().st_size for p in weights) / 2**20, 3)
