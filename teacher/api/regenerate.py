"""Regenerate the committed gRPC stubs from ``proto/`` (run from the repo root).

The ``.proto`` lives at ``proto/distill/teacher/v1/teacher.proto`` (wire package
``distill.teacher.v1``); it is mapped onto ``teacher/api/`` so the generated
modules import each other as ``teacher.api.teacher_pb2``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "proto" / "distill" / "teacher" / "v1"
PROTO_NAME = "teacher.proto"
GENERATED = ("teacher_pb2.py", "teacher_pb2.pyi", "teacher_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Write the stubs under ``out_root/teacher/api`` and return their paths."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    (out_root / "teacher" / "api").mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-Iteacher/api={PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"teacher/api/{PROTO_NAME}",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return [out_root / "teacher" / "api" / name for name in GENERATED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-root", type=Path, default=REPO_ROOT)
    args = parser.parse_args(argv)
    for path in generate(args.out_root):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
