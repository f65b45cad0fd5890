"""A teacher started in-process: a real gRPC server on a free localhost port and a
client for it, called exactly as a remote teacher is.

    async with local_teacher(["teacher=qwen2.5-coder-1.5b-instruct"]) as (client, server):
        (result,) = await client.generate("Hi")

Used by ``distill-teacher demo`` and ``generate --in-process``, the experiment's
generate stage and the benchmarks; ``server.service`` is the in-process service.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from teacher.serving.client import TeacherClient
from teacher.serving.engine import EngineSettings
from teacher.serving.server import (
    ModelSpec,
    ServerConfig,
    TeacherServer,
    build_service,
    parse_model_spec,
)
from teacher.serving.service import Limits

LOCALHOST = "127.0.0.1"


@contextlib.asynccontextmanager
async def local_teacher(
    models: Sequence[ModelSpec | str],
    engine: EngineSettings | None = None,
    limits: Limits | None = None,
    timeout_s: float | None = 300.0,
) -> AsyncIterator[tuple[TeacherClient, TeacherServer]]:
    """Serve ``models`` (``ModelSpec``s or ``[NAME=]SOURCE`` strings; the first is the
    default) until the block ends, then drain and stop. Yields (client, server); the
    client's per-call deadline is ``timeout_s`` (None: none)."""
    specs = [m if isinstance(m, ModelSpec) else parse_model_spec(m) for m in models]
    config = ServerConfig(models=specs, engine=engine or EngineSettings(), host=LOCALHOST,
                          port=0, limits=limits or Limits())
    server = TeacherServer(build_service(config.models, config.engine, config.limits), config)
    await server.start()
    try:
        async with TeacherClient(f"{LOCALHOST}:{server.port}", timeout_s=timeout_s) as client:
            yield client, server
    finally:
        await server.drain_and_stop()
