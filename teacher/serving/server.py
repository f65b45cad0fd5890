"""The gRPC server: the Teacher service plus health, reflection, TLS, auth, drain.

Start-up order matters to probes: the port opens with health NOT_SERVING, the
models load, then health flips to SERVING. SIGTERM flips it back to
NOT_SERVING, lets in-flight requests finish (up to a drain timeout), then exits.
An engine that fails turns its model NOT_SERVING; ``serve`` then stops and
returns 1, so an orchestrator replaces the process.

Secure by default: the server binds loopback; a non-loopback address needs a
bearer token (``token_file``) or an explicit ``insecure``. Requests that do not
parse are INVALID_ARGUMENT (one log line), and keepalive pings close the
connections of clients that went away, freeing their admission slots.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
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
from teacher.serving.errors import clip
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
    host: str = "127.0.0.1"  # loopback; other addresses need token_file or insecure
    port: int = 50051  # 0 picks a free port
    limits: Limits = field(default_factory=Limits)
    tls_cert: str | None = None
    tls_key: str | None = None
    token_file: str | None = None
    insecure: bool = False  # allow a non-loopback bind without a token
    drain_timeout_s: float = 30.0
    # Largest request accepted: 1024 full-context prompts of a 2k-token model fit.
    max_message_bytes: int = 16 * 1024 * 1024
    keepalive_s: float = 60.0  # ping each client this often ...
    keepalive_timeout_s: float = 20.0  # ... and close its connection if it does not answer
    max_connection_idle_s: float = 1800.0  # close connections without calls (0: never)
    max_connection_age_s: float = 0.0  # 0: unlimited; else GOAWAY, drain_timeout_s grace


def is_loopback(host: str) -> bool:
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def check_exposure(config: ServerConfig) -> None:
    """Refuse to serve a non-loopback address to anyone who can reach it."""
    address = f"{config.host}:{config.port}"
    tls = bool(config.tls_cert and config.tls_key)
    if is_loopback(config.host):
        return
    if config.token_file:
        if not tls:
            log.warning("serving %s with a bearer token but no TLS: the token travels in "
                        "clear text; add --tls-cert/--tls-key", address)
        return
    if config.insecure:
        log.warning("serving %s WITHOUT authentication (--insecure): anyone who can reach it "
                    "may use the models", address)
        return
    raise ValueError(
        f"refusing to serve {address} without authentication: anyone who can reach it could "
        "use the models. Secure it with --token-file FILE (clients then send "
        "'authorization: Bearer <token>'; add --tls-cert/--tls-key to encrypt), bind "
        "--host 127.0.0.1 (the default) for local use only, or pass --insecure if the "
        "network itself is trusted"
    )


def server_options(config: ServerConfig) -> list[tuple[str, int]]:
    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),  # our replies, bounded by limits
        ("grpc.keepalive_time_ms", ms(config.keepalive_s)),
        ("grpc.keepalive_timeout_ms", ms(config.keepalive_timeout_s)),
        # Keep pinging a client that waits on a long call with no data flowing.
        ("grpc.http2.max_pings_without_data", 0),
        # Clients may keep their own connections alive (every 10 s at most).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]
    if config.max_connection_idle_s > 0:
        options.append(("grpc.max_connection_idle_ms", ms(config.max_connection_idle_s)))
    if config.max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", ms(config.max_connection_age_s)))
        options.append(("grpc.max_connection_age_grace_ms", ms(config.drain_timeout_s)))
    return options


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


class _Malformed:
    """What a request that did not parse becomes (instead of an exception in gRPC)."""

    def __init__(self, error: Exception):
        self.error = error


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Requests whose bytes do not parse (corrupt, invalid UTF-8 in a string, nested
    too deep) are INVALID_ARGUMENT with one log line, not UNKNOWN with a traceback."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        if not (handler.unary_unary or handler.unary_stream):
            return handler  # streaming requests (reflection) parse per message
        method = details.method
        parse = handler.request_deserializer

        def lenient(data: bytes):
            try:
                return parse(data)
            except Exception as exc:  # protobuf's DecodeError, whatever the cause
                return _Malformed(exc)

        async def refuse(request: _Malformed, context) -> None:
            message = f"request: not a valid message for {method}: {clip(request.error, 200)}"
            log.warning("%s from %s -> INVALID_ARGUMENT: %s", method, context.peer(),
                        clip(request.error, 200))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

        kwargs = {
            "request_deserializer": lenient,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            behaviour = handler.unary_unary

            async def unary(request, context):
                if isinstance(request, _Malformed):
                    await refuse(request, context)
                return await behaviour(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
        streaming = handler.unary_stream

        async def stream(request, context):
            if isinstance(request, _Malformed):
                await refuse(request, context)
            replies = streaming(request, context)
            try:
                async for reply in replies:
                    yield reply
            finally:  # closed now, not by the garbage collector: frees engine slots
                await replies.aclose()

        return grpc.unary_stream_rpc_method_handler(stream, **kwargs)


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
        hosts.append(ModelHost(spec.name, engine_, limits.max_queue, limits.max_queue_tokens))
    return TeacherService(hosts, limits)


class TeacherServer:
    """A running grpc.aio server around a TeacherService."""

    def __init__(self, service: TeacherService, config: ServerConfig):
        self.service = service
        self.config = config
        self.port = 0
        self._health = health.aio.HealthServicer()
        self._stopped = asyncio.Event()
        self._engine_failed = asyncio.Event()
        check_exposure(config)
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if config.token_file:
            token = Path(config.token_file).read_text().strip()
            if not token:
                raise ValueError(f"token file {config.token_file} is empty")
            interceptors.append(BearerTokenInterceptor(token))
        interceptors.append(MalformedRequestInterceptor())
        self.server = grpc.aio.server(interceptors=interceptors, options=server_options(config))
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
        if self.service.failed:
            self._engine_failed.set()

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

    async def run(self) -> int:
        """Serve until stopped (0) or until a model's engine fails: then NOT_SERVING,
        drain, stop and 1, for an orchestrator to replace this server."""
        stopped = asyncio.ensure_future(self._stopped.wait())
        failed = asyncio.ensure_future(self._engine_failed.wait())
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        for waiter in (stopped, failed):
            waiter.cancel()
        if self._stopped.is_set():
            return 0
        log.error("engine of %s failed; stopping with exit status 1 so that this server is "
                  "replaced", self.service.failed)
        await self.drain_and_stop()
        return 1

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: loop.create_task(self.drain_and_stop()))


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT (0) or an engine failure (1)."""
    check_exposure(config)  # before any model is resolved or loaded
    service = build_service(config.models, config.engine, config.limits)
    server = TeacherServer(service, config)
    server.install_signal_handlers()
    await server.start()
    print(
        f"distill-teacher serving {list(service.hosts)} on port {server.port} "
        f"(engine {config.engine.resolved().name})",
        flush=True,
    )
    return await server.run()
