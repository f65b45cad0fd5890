"""The gRPC servicer: converts messages and maps exceptions to status codes.

No logic lives here beyond that; see ``teacher.serving.service`` for behaviour.
"""

from __future__ import annotations

import contextlib
import logging
import uuid

import grpc

from teacher.api import teacher_pb2 as pb
from teacher.api import teacher_pb2_grpc as pb_grpc
from teacher.distill.modes import distill_example
from teacher.serving import convert
from teacher.serving.errors import (
    AlreadyExists,
    EngineUnavailable,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TeacherError,
    clip,
)
from teacher.serving.service import SampleResult, TeacherService

log = logging.getLogger(__name__)

REQUEST_ID_KEYS = ("x-request-id", "x-correlation-id")
# A status message is sent as metadata: keep it well under clients' default 8 KB
# metadata limit whatever a caller sent (values are also clipped where quoted).
MAX_DETAILS_CHARS = 1024

# The one place where exceptions become status codes.
STATUS_FOR = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    EngineUnavailable: grpc.StatusCode.UNAVAILABLE,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
}


def status_for(exc: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS_FOR.items():
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def request_id_of(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key in REQUEST_ID_KEYS and value:
            return str(value)[:128]
    return uuid.uuid4().hex


@contextlib.asynccontextmanager
async def rpc_scope(context: grpc.aio.ServicerContext, method: str):
    """Echo the correlation id, log the call, and turn exceptions into statuses."""
    request_id = request_id_of(context)
    await context.send_initial_metadata((("x-request-id", request_id),))
    try:
        yield request_id
    except TeacherError as exc:
        code = status_for(exc)
        details = clip(exc, MAX_DETAILS_CHARS)
        log.info("%s [%s] -> %s: %s", method, request_id, code.name, clip(details, 200))
        await context.abort(code, details)
    except (grpc.aio.AbortError, grpc.aio.UsageError):
        raise
    except Exception as exc:  # a bug: report it without killing the server
        log.exception("%s [%s] failed", method, request_id)
        await context.abort(
            grpc.StatusCode.INTERNAL, clip(f"internal error: {exc}", MAX_DETAILS_CHARS)
        )


class TeacherServicer(pb_grpc.TeacherServicer):
    def __init__(self, service: TeacherService):
        self.service = service

    async def Generate(self, request: pb.GenerateRequest, context):
        async with rpc_scope(context, "Generate") as request_id:
            prompt = convert.prompt_from_pb(request.prompt)
            params = convert.params_from_pb(request.sampling)
            async for event in self.service.generate(request.model, prompt, params, request_id):
                if isinstance(event, SampleResult):
                    yield convert.final_to_pb(event, event.provenance)
                else:
                    yield convert.chunk_to_pb(event)

    async def GenerateBatch(self, request: pb.GenerateBatchRequest, context):
        async with rpc_scope(context, "GenerateBatch") as request_id:
            prompts = [
                convert.prompt_from_pb(p, f"prompts[{i}]") for i, p in enumerate(request.prompts)
            ]
            params = convert.params_from_pb(request.sampling)
            results, params, host = await self.service.generate_batch(
                request.model, prompts, params, request_id
            )
            return pb.GenerateBatchResponse(
                results=[
                    pb.PromptCompletions(samples=[convert.completion_to_pb(s) for s in samples])
                    for samples in results
                ],
                provenance=convert.provenance_to_pb(
                    self.service.provenance(host, params.seed or 0, request_id)
                ),
            )

    async def Score(self, request: pb.ScoreRequest, context):
        async with rpc_scope(context, "Score") as request_id:
            items = convert.score_items_from_pb(request.items)
            results, host = await self.service.score(
                request.model, items, request.ppl_threshold, request.return_tokens,
                top_k=request.top_k,
            )
            return pb.ScoreResponse(
                results=[convert.score_result_to_pb(r, request.return_tokens) for r in results],
                provenance=convert.provenance_to_pb(self.service.provenance(host, 0, request_id)),
            )

    async def Tokenize(self, request: pb.TokenizeRequest, context):
        async with rpc_scope(context, "Tokenize") as request_id:
            prompt = convert.prompt_from_pb(request.prompt)
            ids = await self.service.encode(request.model, prompt)
            tokens = self.service.token_strings(request.model, ids) if request.return_tokens else []
            host = self.service.host(request.model)
            return pb.TokenizeResponse(
                token_ids=ids,
                tokens=tokens,
                count=len(ids),
                provenance=convert.provenance_to_pb(self.service.provenance(host, 0, request_id)),
            )

    async def ListModels(self, request: pb.ListModelsRequest, context):
        async with rpc_scope(context, "ListModels"):
            return pb.ListModelsResponse(
                models=[
                    convert.model_info_to_pb(info, is_default)
                    for info, is_default in self.service.list_models()
                ]
            )

    async def GetLoad(self, request: pb.GetLoadRequest, context):
        async with rpc_scope(context, "GetLoad"):
            return pb.GetLoadResponse(
                models=[
                    pb.ModelLoad(model=name, running=running, waiting=waiting, max_queue=max_queue)
                    for name, running, waiting, max_queue in self.service.load(request.model)
                ]
            )

    async def Distill(self, request: pb.DistillRequest, context):
        async with rpc_scope(context, "Distill") as request_id:
            example, options = convert.distill_request_from_pb(request)
            record = await distill_example(self.service, example, options, request_id)
            return pb.DistillResponse(record=convert.record_to_pb(record))

    async def LoadAdapter(self, request: pb.LoadAdapterRequest, context):
        async with rpc_scope(context, "LoadAdapter"):
            adapter = await self.service.load_adapter(
                request.base_model, request.name, request.path, request.replace
            )
            return pb.LoadAdapterResponse(
                adapter=convert.adapter_to_pb(adapter), replaced=adapter.replaced
            )

    async def UnloadAdapter(self, request: pb.UnloadAdapterRequest, context):
        async with rpc_scope(context, "UnloadAdapter"):
            adapter = await self.service.unload_adapter(request.name)
            return pb.UnloadAdapterResponse(adapter=convert.adapter_to_pb(adapter))
