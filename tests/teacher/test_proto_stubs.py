"""The committed gRPC stubs are exactly what grpcio-tools makes of proto/ (no drift)."""

from __future__ import annotations

from pathlib import Path

import pytest

from teacher.api.regenerate import GENERATED, REPO_ROOT, generate


def test_committed_stubs_match_the_proto(tmp_path: Path):
    pytest.importorskip("grpc_tools")
    generate(tmp_path)
    for name in GENERATED:
        committed = REPO_ROOT / "teacher" / "api" / name
        fresh = tmp_path / "teacher" / "api" / name
        assert committed.read_text() == fresh.read_text(), (
            f"teacher/api/{name} is stale: run `python -m teacher.api.regenerate`"
        )


def test_wire_package_and_service():
    from teacher.api import teacher_pb2 as pb

    assert pb.DESCRIPTOR.package == "distill.teacher.v1"
    methods = set(pb.DESCRIPTOR.services_by_name["Teacher"].methods_by_name)
    assert {"Generate", "GenerateBatch", "Score", "Tokenize", "ListModels", "GetLoad"} <= methods
