"""Python client of the teacher service: async ``TeacherClient`` and a sync wrapper.

Give it one address or many (``"h1:50051,h2:50051"``): calls are spread
round-robin, and a call that fails with UNAVAILABLE or RESOURCE_EXHAUSTED is
retried with exponential backoff on the next address (one policy for unary and
streaming calls). A streaming call is only retried before its first message
arrives, so no output is duplicated. Every call returns the service's typed
results (``SampleChunk``, ``SampleResult``, ``ScoreResult``, ``TokenizeResult``,
``ServedModelInfo``, ``ModelLoad``; converted in :mod:`teacher.serving.convert`).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from teacher.api import teacher_pb2 as pb
from teacher.api import teacher_pb2_grpc as pb_grpc
from teacher.core.records import Record
from teacher.core.tasks import Example
from teacher.distill.modes import DistillOptions
from teacher.serving import convert
from teacher.serving.sampling import SamplingParams
from teacher.serving.service import (
    AdapterInfo,
    ModelLoad,
    SampleChunk,
    SampleResult,
    ScoreItem,
    ScoreResult,
    ServedModelInfo,
    TokenizeResult,
)
from teacher.serving.tokenization import PromptInput

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class TeacherUnavailableError(RuntimeError):
    """No teacher replica answered after all retries."""


def parse_addresses(addresses: str | Sequence[str]) -> list[str]:
    if isinstance(addresses, str):
        addresses = addresses.split(",")
    parsed = [a.strip() for a in addresses if a.strip()]
    if not parsed:
        raise ValueError("no teacher address given (HOST:PORT[,HOST:PORT...])")
    return parsed


class TeacherClient:
    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        token: str | None = None,
        tls_ca: str | None = None,
        timeout_s: float | None = 300.0,
        retries: int = 4,
        backoff_s: float = 0.25,
        max_backoff_s: float = 8.0,
    ):
        self.addresses = parse_addresses(addresses)
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._metadata: tuple[tuple[str, str], ...] = ()
        if token:
            self._metadata = (("authorization", f"Bearer {token}"),)
        options = [
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            # A name resolving to many replicas (a Kubernetes headless service:
            # dns:///teacher.NAMESPACE.svc.cluster.local:50051) is balanced per call too.
            ("grpc.lb_policy_name", "round_robin"),
        ]
        if tls_ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
            self._channels = [grpc.aio.secure_channel(a, creds, options) for a in self.addresses]
        else:
            self._channels = [grpc.aio.insecure_channel(a, options) for a in self.addresses]
        self._stubs = [pb_grpc.TeacherStub(c) for c in self._channels]
        self._next = itertools.count(random.randrange(len(self._stubs)))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels))

    async def __aenter__(self) -> TeacherClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ------------------------------------------------------------ plumbing

    def _call_metadata(self, request_id: str | None) -> tuple[tuple[str, str], ...]:
        return (*self._metadata, ("x-request-id", request_id or uuid.uuid4().hex))

    def _attempts(self, stub: Any = None) -> Iterator[tuple[int, Any]]:
        """(attempt, stub) for each try of one call, round-robin over the replicas
        (or all on ``stub``: a call that changes one replica's state)."""
        for attempt in range(self.retries + 1):
            yield attempt, stub or self._stubs[next(self._next) % len(self._stubs)]

    async def _retry_or_raise(self, err: grpc.aio.AioRpcError, attempt: int) -> None:
        """The one retry policy: re-raise what a retry cannot fix; else back off
        (exponentially, with jitter) before the next attempt."""
        if err.code() not in RETRYABLE:
            raise err
        if attempt < self.retries:
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    def _gave_up(self, method: str, last: grpc.aio.AioRpcError) -> TeacherUnavailableError:
        return TeacherUnavailableError(
            f"teacher {','.join(self.addresses)} did not answer {method} after "
            f"{self.retries + 1} attempts: {last.code().name}: {last.details()}"
        )

    async def _calls(
        self,
        method: str,
        request: Any,
        request_id: str | None,
        timeout_s: float | None,
        *,
        stream: bool = False,
        replica: Any = None,
    ) -> AsyncIterator[Any]:
        """The replies of one call (one for a unary method, the messages of a stream),
        tried against the replicas under the one retry policy. A stream is retried only
        until its first message: retrying later would repeat output already given."""
        metadata = self._call_metadata(request_id)
        last: grpc.aio.AioRpcError | None = None
        for attempt, stub in self._attempts(replica):
            call = getattr(stub, method)(
                request, timeout=timeout_s or self.timeout_s, metadata=metadata
            )
            received = False
            try:
                if stream:
                    async for message in call:
                        received = True
                        yield message
                else:
                    yield await call
                return
            except grpc.aio.AioRpcError as err:
                if received:
                    raise
                await self._retry_or_raise(err, attempt)
                last = err
            finally:
                call.cancel()  # no-op when finished; frees the server slot if we stop early
        raise self._gave_up(method, last) from last

    async def _unary(
        self,
        method: str,
        request: Any,
        request_id: str | None = None,
        timeout_s: float | None = None,
        stub: Any = None,
    ) -> Any:
        replies = self._calls(method, request, request_id, timeout_s, replica=stub)
        try:
            return await anext(replies)
        finally:
            await replies.aclose()

    # ------------------------------------------------------------ API

    async def generate_stream(
        self,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        *,
        model: str = "",
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[SampleChunk | SampleResult]:
        """Chunks of new text as they are generated, and each sample's final result
        (``SampleResult.index`` says which sample; ``n`` samples interleave)."""
        request = pb.GenerateRequest(
            model=model,
            prompt=convert.prompt_to_pb(prompt),
            sampling=convert.params_to_pb(params or SamplingParams()),
        )
        async for message in self._calls("Generate", request, request_id, timeout_s, stream=True):
            yield convert.generate_event_from_pb(message)

    async def generate(
        self,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        *,
        model: str = "",
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> list[SampleResult]:
        """Generate and return the final result of each sample, in index order."""
        finals: dict[int, SampleResult] = {}
        async for event in self.generate_stream(
            prompt, params, model=model, request_id=request_id, timeout_s=timeout_s
        ):
            if isinstance(event, SampleResult):
                finals[event.index] = event
        return [finals[i] for i in sorted(finals)]

    async def generate_batch(
        self,
        prompts: Sequence[PromptInput],
        params: SamplingParams | None = None,
        *,
        model: str = "",
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> list[list[SampleResult]]:
        request = pb.GenerateBatchRequest(
            model=model,
            prompts=[convert.prompt_to_pb(p) for p in prompts],
            sampling=convert.params_to_pb(params or SamplingParams()),
        )
        response = await self._unary("GenerateBatch", request, request_id, timeout_s)
        out = []
        for result in response.results:
            out.append([convert.completion_from_pb(c, i) for i, c in enumerate(result.samples)])
        return out

    async def score(
        self,
        items: Sequence[ScoreItem | tuple[PromptInput, str]],
        *,
        model: str = "",
        ppl_threshold: float = 0.0,
        return_tokens: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
        top_k: int = 0,
    ) -> list[ScoreResult]:
        """Per-token statistics of each completion after its prompt; token ids,
        logprobs and strings only with ``return_tokens``; with ``top_k`` each result's
        ``top_logprobs`` (a ``teacher.core.topk.TopK``) holds the scorer's ``top_k`` most
        likely tokens at every completion position and the mass outside them."""
        pb_items = []
        for item in items:
            prompt, completion = (
                (item.prompt, item.completion) if isinstance(item, ScoreItem) else item
            )
            pb_items.append(
                pb.ScoreItem(prompt=convert.prompt_to_pb(prompt), completion=completion)
            )
        request = pb.ScoreRequest(
            model=model, items=pb_items, ppl_threshold=ppl_threshold, return_tokens=return_tokens,
            top_k=top_k,
        )
        response = await self._unary("Score", request, request_id, timeout_s)
        return [convert.score_result_from_pb(r) for r in response.results]

    async def distill(
        self,
        example: Example,
        options: DistillOptions,
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Record:
        """One distillation record for ``example`` (see ``teacher.distill.modes``)."""
        request = convert.distill_request_to_pb(example, options)
        response = await self._unary("Distill", request, request_id, timeout_s)
        return convert.record_from_pb(response.record)

    async def tokenize(
        self, prompt: PromptInput, *, model: str = "", return_tokens: bool = False
    ) -> TokenizeResult:
        request = pb.TokenizeRequest(
            model=model, prompt=convert.prompt_to_pb(prompt), return_tokens=return_tokens
        )
        return convert.tokenize_from_pb(await self._unary("Tokenize", request))

    async def list_models(self) -> list[ServedModelInfo]:
        response = await self._unary("ListModels", pb.ListModelsRequest())
        return [convert.model_info_from_pb(m) for m in response.models]

    async def load_adapter(
        self,
        base_model: str,
        name: str,
        path: str,
        replace: bool = False,
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> AdapterInfo:
        """Serve the peft LoRA adapter at ``path`` (a directory on the server) on
        ``base_model`` as ``name``: afterwards requests with ``model=name`` run under it.
        Loaded on every replica (each under the retry policy; a retry is safe: loading
        the same content again is a no-op). ``replace`` swaps the weights of an adapter
        of that name (requests already running finish under the old ones);
        ``AdapterInfo.replaced`` says whether it did."""
        request = pb.LoadAdapterRequest(base_model=base_model, name=name, path=path,
                                        replace=replace)
        responses = await asyncio.gather(*(
            self._unary("LoadAdapter", request, request_id, timeout_s, stub=stub)
            for stub in self._stubs
        ))
        first = responses[0]
        return convert.adapter_from_pb(first.adapter, replaced=first.replaced)

    async def unload_adapter(
        self, name: str, *, request_id: str | None = None, timeout_s: float | None = None
    ) -> AdapterInfo:
        """Stop serving adapter ``name`` on every replica (NOT_FOUND where it is not
        loaded); requests already running under it finish."""
        request = pb.UnloadAdapterRequest(name=name)
        responses = await asyncio.gather(*(
            self._unary("UnloadAdapter", request, request_id, timeout_s, stub=stub)
            for stub in self._stubs
        ))
        return convert.adapter_from_pb(responses[0].adapter)

    async def get_load(self, model: str = "") -> list[ModelLoad]:
        response = await self._unary("GetLoad", pb.GetLoadRequest(model=model))
        return [convert.model_load_from_pb(m) for m in response.models]

    async def wait_ready(self, timeout_s: float = 600.0, service: str = "") -> None:
        """Wait until every address reports SERVING on the health service."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for channel, address in zip(self._channels, self.addresses, strict=True):
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = await stub.Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=5
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                if loop.time() > deadline:
                    raise TeacherUnavailableError(
                        f"teacher at {address} not SERVING after {timeout_s:.0f} s"
                    )
                await asyncio.sleep(0.5)


class SyncTeacherClient:
    """Blocking wrapper: the same methods, each run to completion on a private loop."""

    def __init__(self, addresses: str | Sequence[str], **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        self._client = self._loop.run_until_complete(self._make(addresses, kwargs))

    @staticmethod
    async def _make(addresses, kwargs) -> TeacherClient:
        return TeacherClient(addresses, **kwargs)  # channels bind to the running loop

    def __getattr__(self, name: str):
        method = getattr(self._client, name)
        if name == "generate_stream":
            raise AttributeError("use TeacherClient for streaming")
        if not asyncio.iscoroutinefunction(method):
            return method

        def call(*args: Any, **kwargs: Any):
            return self._loop.run_until_complete(method(*args, **kwargs))

        return call

    def close(self) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()

    def __enter__(self) -> SyncTeacherClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
