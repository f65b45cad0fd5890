"""The gRPC server: the Teacher service plus health, reflection, TLS, auth, drain.

Start-up order matters to probes: the port opens with health NOT_SERVING, the
models load, then health flips to SERVING. SIGTERM flips it back to
NOT_SERVING, lets in-flight requests finish (up to a drain timeout), then exits.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from teacher.api import teacher_pb2 as pb
from teacher.api import teacher_pb2_grpc as pb_grpc
from teacher.serving.engine import EngineSettings, load_engine
from teacher.serving.service import Limits, ModelHost, TeacherService
from teacher.serving.servicer import TeacherServicer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Teacher"].full_name
HEALTH_PREFIX = "/grpc.health.v1.Health/"


@dataclass
class ModelSpec:
    name: str
    source: str  # a catalogue name, local path or hub id


@dataclass
class ServerConfig:
    models: list[ModelSpec]
    engine: EngineSettings = field(default_factory=EngineSettings)
    host: str = "[::]"
    port: int = 50051  # 0 picks a free port
    limits: Limits = field(default_factory=Limits)
    tls_cert: str | None = None
    tls_key: str | None = None
    token_file: str | None = None
    drain_timeout_s: float = 30.0


def parse_model_spec(spec: str) -> ModelSpec:
    """``NAME=SOURCE`` or just ``SOURCE`` (named after its last path part)."""
    if "=" in spec:
        name, source = spec.split("=", 1)
    else:
        source = spec
        name = Path(spec.rstrip("/")).name or spec
    if not name or not source:
        raise ValueError(f"bad --model {spec!r}; use NAME=PATH_OR_CATALOGUE_NAME")
    return ModelSpec(name, source)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` (health probes exempt)."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        metadata = dict(details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(given, self._expected):
            return handler
        return _denying_handler(handler)


def _denying_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    message = "missing or invalid bearer token (metadata 'authorization: Bearer <token>')"

    async def deny(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)


def build_service(
    models: Sequence[ModelSpec], engine: EngineSettings, limits: Limits | None = None
) -> TeacherService:
    """The one builder of a TeacherService: an engine per model (not started yet),
    each model resolved through the catalogue (a local directory is used as it is)."""
    from teacher.core import models as catalogue

    limits = limits or Limits()
    settings = engine.resolved()
    hosts = []
    for spec in models:
        path = catalogue.resolve(spec.source)
        engine_ = load_engine(settings, str(path), spec.name, catalogue.revision_of(path))
        hosts.append(ModelHost(spec.name, engine_, limits.max_queue))
    return TeacherService(hosts, limits)


class TeacherServer:
    """A running grpc.aio server around a TeacherService."""

    def __init__(self, service: TeacherService, config: ServerConfig):
        self.service = service
        self.config = config
        self.port = 0
        self._health = health.aio.HealthServicer()
        self._stopped = asyncio.Event()
        interceptors = []
        if config.token_file:
            token = Path(config.token_file).read_text().strip()
            if not token:
                raise ValueError(f"token file {config.token_file} is empty")
            interceptors.append(BearerTokenInterceptor(token))
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )
        pb_grpc.add_TeacherServicer_to_server(TeacherServicer(service), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        service.on_health_change(self._on_health_change)

    async def start(self) -> int:
        """Open the port (NOT_SERVING), load the models, then report SERVING."""
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls_cert or self.config.tls_key:
            if not (self.config.tls_cert and self.config.tls_key):
                raise ValueError("TLS needs both --tls-cert and --tls-key")
            credentials = grpc.ssl_server_credentials(
                [(Path(self.config.tls_key).read_bytes(), Path(self.config.tls_cert).read_bytes())]
            )
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        await self._set_health(False)
        await self.server.start()
        log.info("listening on port %d; loading %s", self.port, list(self.service.hosts))
        await self.service.start()
        log.info("serving %s", list(self.service.hosts))
        return self.port

    def _on_health_change(self) -> None:
        asyncio.get_running_loop().create_task(self._set_health(self.service.serving))

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._health.set("", status)
        await self._health.set(SERVICE_NAME, status)
        for name in self.service.hosts:
            model_ok = serving or self.service.model_serving(name)
            await self._health.set(
                f"{SERVICE_NAME}/{name}",
                health_pb2.HealthCheckResponse.SERVING
                if model_ok
                else health_pb2.HealthCheckResponse.NOT_SERVING,
            )

    async def drain_and_stop(self) -> None:
        """NOT_SERVING first, wait for in-flight requests, then stop."""
        if self._stopped.is_set():
            return
        log.info("draining: %d requests in flight", self.service.in_flight())
        self.service.begin_drain()
        await self._set_health(False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout_s
        while self.service.in_flight() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await self.server.stop(grace=1.0)
        await self.service.shutdown()
        self._stopped.set()
        log.info("stopped")

    async def wait(self) -> None:
        await self._stopped.wait()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: loop.create_task(self.drain_and_stop()))


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT."""
    service = build_service(config.models, config.engine, config.limits)
    server = TeacherServer(service, config)
    server.install_signal_handlers()
    await server.start()
    print(
        f"distill-teacher serving {list(service.hosts)} on port {server.port} "
        f"(engine {config.engine.resolved().name})",
        flush=True,
    )
    await server.wait()
