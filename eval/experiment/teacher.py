"""The teacher for the generate stage: one at ``teacher.address``, or one started
in-process on a free port hosting the models the pending data jobs name."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from eval.experiment.config import ExperimentError, served_models
from eval.experiment.planner import DataJob, Plan


@contextlib.asynccontextmanager
async def teacher_client(plan_: Plan, needed: set[str]) -> AsyncIterator[Any]:
    """A client for the configured address, or for an in-process server hosting
    ``needed`` (started on a free port and stopped on exit)."""
    from teacher.serving.client import TeacherClient
    from teacher.serving.local import local_teacher
    from teacher.serving.service import Limits

    t = plan_.config.teacher
    if t.address:
        token = Path(t.token_file).read_text().strip() if t.token_file else None
        async with TeacherClient(t.address, token=token, timeout_s=None) as client:
            yield client
        return
    served = served_models(plan_.config)
    engine = t.engine_settings()
    async with local_teacher([f"{name}={served[name]}" for name in served if name in needed],
                             engine, Limits(max_queue=4096, max_queue_tokens=0),
                             timeout_s=None) as (client, _):
        yield client


async def check_teacher(plan_: Plan, jobs: Sequence[DataJob]) -> None:
    """An address must answer and serve every model the pending jobs name."""
    import grpc

    from teacher.serving.client import TeacherClient, TeacherUnavailableError

    t = plan_.config.teacher
    if not t.address or not jobs:
        return
    token = Path(t.token_file).read_text().strip() if t.token_file else None
    async with TeacherClient(t.address, token=token, timeout_s=t.ready_timeout_s,
                             retries=0) as client:
        try:
            await client.wait_ready(timeout_s=t.ready_timeout_s)
            served = [m.name for m in await client.list_models()]
        except (TeacherUnavailableError, grpc.aio.AioRpcError) as e:
            details = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            raise ExperimentError(f"teacher.address {t.address}: the teacher does not answer "
                                  f"({details})") from None
    for job in jobs:
        for role, name in (("generator", job.generator), ("scorer", job.scorer)):
            if name not in served:
                raise ExperimentError(f"arms ({job.mode}).{role}: {name!r} is not served by "
                                      f"the teacher at {t.address} (it serves {served})")
