"""End to end: a real grpc.aio server on localhost, a real model, both engines."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from teacher.api import teacher_pb2 as pb
from teacher.api import teacher_pb2_grpc as pb_grpc
from teacher.serving.client import TeacherClient, TeacherUnavailableError
from teacher.serving.engine import EngineSettings, load_engine
from teacher.serving.sampling import SamplingParams
from teacher.serving.server import ServerConfig, TeacherServer
from teacher.serving.service import ModelHost, SampleChunk, SampleResult, TeacherService
from tests.conftest import ENGINES

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


async def start_server(model_dir, engine: str, *, name: str = "smol", **config) -> TeacherServer:
    cfg = ServerConfig(models=[], host="127.0.0.1", port=0, **config)
    settings = EngineSettings(name=engine, dtype="float32")
    engine_ = load_engine(settings, str(model_dir), name, "test")
    host = ModelHost(name, engine_, cfg.limits.max_queue)
    server = TeacherServer(TeacherService([host], cfg.limits), cfg)
    await server.start()
    return server


class ServerPool:
    """One real server per engine for the whole session, started on first use."""

    def __init__(self, model_dir):
        self.model_dir = model_dir
        self.servers: dict[str, TeacherServer] = {}

    async def get(self, engine: str) -> TeacherServer:
        if engine not in self.servers:
            self.servers[engine] = await start_server(self.model_dir, engine)
        return self.servers[engine]


@pytest.fixture(scope="session")
async def server_pool(test_model_dir):
    pool = ServerPool(test_model_dir)
    yield pool
    for srv in pool.servers.values():
        await srv.drain_and_stop()


@pytest.fixture(params=ENGINES)
async def server(request, server_pool):
    return await server_pool.get(request.param)


@pytest.fixture
async def client(server):
    async with TeacherClient(f"127.0.0.1:{server.port}", retries=1, backoff_s=0.05) as c:
        yield c


async def wait_idle(client: TeacherClient, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        load = (await client.get_load())[0]
        if load.running == 0 and load.waiting == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"server still busy: {load}")


# ---------------------------------------------------------------- generation


async def test_stream_chunks_add_up_to_final(client):
    chunks, finals = [], []
    async for event in client.generate_stream(CHAT, SamplingParams(max_new_tokens=24, seed=3)):
        (chunks if isinstance(event, SampleChunk) else finals).append(event)
    assert len(finals) == 1 and chunks
    final = finals[0]
    assert isinstance(final, SampleResult) and final.index == 0
    assert "".join(c.text for c in chunks) == final.text
    assert [t for c in chunks for t in c.token_ids] == list(final.token_ids)
    assert final.completion_tokens == len(final.token_ids) > 0
    assert final.prompt_tokens > 0
    assert final.stop_reason in ("eos", "max_tokens")
    assert final.time_to_first_token_s > 0
    assert final.total_s >= final.time_to_first_token_s
    prov = final.provenance
    assert (prov.model, prov.revision, prov.seed) == ("smol", "test", 3)
    assert prov.engine in ("hf", "vllm")


async def test_max_tokens_and_stop_sequence(client):
    (r,) = await client.generate("1, 2, 3, 4,", SamplingParams(max_new_tokens=5))
    assert r.stop_reason == "max_tokens" and r.completion_tokens == 5
    (r,) = await client.generate("1, 2, 3, 4,", SamplingParams(max_new_tokens=40, stop=["8"]))
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == "8"
    assert "8" not in r.text and r.text.strip().startswith("5")


async def test_seeded_sampling_is_reproducible(client):
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=1234, n=3)
    first = await client.generate("Once upon a time", params)
    second = await client.generate("Once upon a time", params)
    assert [s.token_ids for s in first] == [s.token_ids for s in second]
    assert len({tuple(s.token_ids) for s in first}) > 1  # samples use seed + i


async def test_logprobs_and_top_alternatives(client):
    params = SamplingParams(max_new_tokens=6, top_logprobs=3)
    (r,) = await client.generate(CHAT, params)
    assert len(r.logprobs) == len(r.token_ids)
    for entry, token in zip(r.logprobs, r.token_ids, strict=True):
        assert entry.token_id == token and entry.logprob <= 0
        assert len(entry.top) == 3
        # greedy: the chosen token is the most likely one
        assert entry.top[0][0] == token and math.isclose(entry.top[0][1], entry.logprob,
                                                         abs_tol=1e-4)


async def test_batch_matches_stream(client):
    prompts = ["The sky is", CHAT, "def fib(n):"]
    params = SamplingParams(max_new_tokens=12, n=2)
    batch = await client.generate_batch(prompts, params)
    assert [len(samples) for samples in batch] == [2, 2, 2]
    for prompt, samples in zip(prompts, batch, strict=True):
        (single,) = await client.generate(prompt, SamplingParams(max_new_tokens=12))
        assert samples[0].token_ids == single.token_ids == samples[1].token_ids  # greedy


# ---------------------------------------------------------------- score, tokenize, metadata


async def test_score_matches_direct_transformers(client, test_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    items = [("The capital of France is", " Paris. It is a large city."),
             (CHAT, "The capital of France is Paris.")]
    results = await client.score(items, ppl_threshold=2.5, return_tokens=True)
    tok = AutoTokenizer.from_pretrained(test_model_dir)
    model = AutoModelForCausalLM.from_pretrained(test_model_dir, dtype=torch.float32).eval()
    for (prompt, completion), result in zip(items, results, strict=True):
        if isinstance(prompt, str):
            prompt_ids = tok(prompt)["input_ids"]
        else:
            text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
        completion_ids = tok(completion, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + completion_ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        targets = ids[0, len(prompt_ids):]
        expected = logprobs[len(prompt_ids) - 1:].gather(1, targets[:, None])[:, 0]
        assert result.num_tokens == len(completion_ids)
        assert list(result.token_ids) == completion_ids
        assert len(result.tokens) == len(result.logprobs) == len(completion_ids)
        assert abs(result.mean_nll - float(-expected.mean())) < 1e-3
        assert math.isclose(result.perplexity, math.exp(result.mean_nll), rel_tol=1e-9)
        share = float((torch.exp(-expected) > 2.5).float().mean())
        assert abs(result.frac_above_threshold - share) < 1e-9 + 1 / len(completion_ids) * 0.01
    # Scored again (one pair from the server's score cache, one new): the same numbers.
    again = await client.score([items[1], ("Paris is in", " France.")], ppl_threshold=2.5,
                               return_tokens=True)
    assert again[0].logprobs == results[1].logprobs
    assert again[1].num_tokens > 0


async def test_tokenize_list_models_load(client):
    response = await client.tokenize("hello world", return_tokens=True)
    assert response.count == len(response.token_ids) == len(response.tokens) > 0
    assert "".join(response.tokens).strip() == "hello world"
    (info,) = await client.list_models()
    assert info.name == "smol" and info.is_default and info.vocab_size > 0
    assert info.context_length == 2048 and info.eos_token_ids and info.dtype == "float32"
    (load,) = await client.get_load()
    assert load.model == "smol" and load.max_queue == 256


async def test_correlation_id_is_echoed(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.TeacherStub(channel)
        call = stub.Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text="hi")),
                             metadata=(("x-request-id", "trace-42"),))
        response = await call
        assert ("x-request-id", "trace-42") in tuple(await call.initial_metadata())
        assert response.provenance.request_id == "trace-42"


async def test_reflection_lists_the_services(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        services = await asyncio.to_thread(
            lambda: ProtoReflectionDescriptorDatabase(channel).get_services()
        )
    assert "distill.teacher.v1.Teacher" in services and "grpc.health.v1.Health" in services


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"prompt": pb.Prompt(text="")}, "prompt"),
        ({"prompt": pb.Prompt()}, "prompt"),
        ({"prompt": pb.Prompt(text="x " * 3000)}, "prompt"),
        ({"sampling": pb.SamplingParams(max_new_tokens=100_000)}, "sampling.max_new_tokens"),
        ({"sampling": pb.SamplingParams(max_new_tokens=2048)}, "sampling.max_new_tokens"),
        ({"sampling": pb.SamplingParams(n=1000)}, "sampling.n"),
        ({"sampling": pb.SamplingParams(stop=["a"] * 100)}, "sampling.stop"),
        ({"sampling": pb.SamplingParams(temperature=-1)}, "sampling.temperature"),
        ({"model": "nope"}, "model"),
    ],
)
async def test_bad_generate_requests_name_the_field(server, request_kwargs, field):
    request = pb.GenerateRequest(prompt=pb.Prompt(text="Hello"))
    for key, value in request_kwargs.items():
        getattr(request, key).CopyFrom(value) if key != "model" else setattr(request, key, value)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.TeacherStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Generate(request, timeout=30):
                pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)


async def test_bad_score_requests(client):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.score([("Hello", "")])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("items[0].completion")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.score([])
    assert err.value.details().startswith("items")


async def test_full_queue_is_resource_exhausted(server, client):
    host = server.service.hosts["smol"]
    host.max_queue = 1
    try:
        long = asyncio.create_task(client.generate("Count: 1, 2,", SamplingParams(
            max_new_tokens=200, min_new_tokens=200)))
        while host.admitted == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(TeacherUnavailableError, match="RESOURCE_EXHAUSTED"):
            await client.generate("Hello", SamplingParams(max_new_tokens=2))
        long.cancel()
        await asyncio.gather(long, return_exceptions=True)
    finally:
        host.max_queue = 256
    await wait_idle(client)


async def test_cancel_frees_the_slot(client):
    stream = client.generate_stream("Count: 1, 2,", SamplingParams(
        max_new_tokens=500, min_new_tokens=500))
    async for event in stream:
        assert isinstance(event, SampleChunk)
        break
    await stream.aclose()  # cancels the RPC
    await wait_idle(client)


async def test_deadline_aborts_generation(client):
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.generate("Count: 1, 2,", SamplingParams(
            max_new_tokens=500, min_new_tokens=500), timeout_s=1.0)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5
    await wait_idle(client)


async def test_time_limit_stops_with_reason(client):
    (r,) = await client.generate("Count: 1, 2,", SamplingParams(
        max_new_tokens=500, min_new_tokens=500, time_limit_s=1.0))
    assert r.stop_reason == "time_limit" and 0 < r.completion_tokens < 500
    await wait_idle(client)


# ---------------------------------------------------------------- engines agree


@pytest.mark.skipif(len(ENGINES) < 2, reason="needs vLLM beside transformers")
async def test_engines_agree_on_greedy_outputs_and_scores(server_pool):
    prompts = [CHAT, "def fibonacci(n):", "The three primary colours are"]
    items = [("The capital of France is", " Paris."), (CHAT, "Paris is the capital of France.")]
    outputs, scores = {}, {}
    for engine in ENGINES:
        srv = await server_pool.get(engine)
        async with TeacherClient(f"127.0.0.1:{srv.port}") as c:
            batch = await c.generate_batch(prompts, SamplingParams(max_new_tokens=16))
            outputs[engine] = [samples[0].token_ids for samples in batch]
            scores[engine] = [r.mean_nll for r in await c.score(items)]
    assert outputs["hf"] == outputs["vllm"]
    for a, b in zip(scores["hf"], scores["vllm"], strict=True):
        assert abs(a - b) < 1e-3


# ---------------------------------------------------------------- load


async def test_64_concurrent_streams_match_sequential(client):
    prompts = [f"Write a short sentence about the number {i}." for i in range(64)]
    params = SamplingParams(max_new_tokens=12)
    sequential = [(await client.generate(p, params))[0].token_ids for p in prompts[:16]]
    concurrent = await asyncio.gather(*(client.generate(p, params) for p in prompts))
    assert all(r[0].stop_reason in ("max_tokens", "eos") for r in concurrent)
    differing = sum(c[0].token_ids != s for c, s in zip(concurrent, sequential, strict=False))
    print(f"greedy outputs differing between concurrent and sequential: {differing}/16")
    assert differing == 0


# ---------------------------------------------------------------- lifecycle (own servers)


async def health_status(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
        return reply.status


async def test_health_transitions_and_drain(test_model_dir):
    cfg = ServerConfig(models=[], host="127.0.0.1", port=0, drain_timeout_s=30)
    engine = load_engine(EngineSettings(name="hf"), str(test_model_dir), "smol")
    server = TeacherServer(TeacherService([ModelHost("smol", engine, 8)]), cfg)
    load_task = asyncio.create_task(server.start())
    while server.port == 0:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert await health_status(server.port) == health_pb2.HealthCheckResponse.NOT_SERVING
    await load_task
    assert await health_status(server.port) == health_pb2.HealthCheckResponse.SERVING
    async with TeacherClient(f"127.0.0.1:{server.port}", retries=0) as client:
        in_flight = asyncio.create_task(client.generate("Count: 1, 2,", SamplingParams(
            max_new_tokens=40, min_new_tokens=40)))
        while server.service.in_flight() == 0:
            await asyncio.sleep(0.01)
        drain = asyncio.create_task(server.drain_and_stop())
        await asyncio.sleep(0.1)
        assert await health_status(server.port) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(TeacherUnavailableError, match="UNAVAILABLE"):
            await client.generate("Hello", SamplingParams(max_new_tokens=2))
        (result,) = await in_flight  # the in-flight request finishes normally
        assert result.completion_tokens == 40
        await drain


async def test_engine_failure_is_unavailable_and_not_serving(test_model_dir, monkeypatch):
    server = await start_server(test_model_dir, "hf")
    engine = server.service.hosts["smol"].engine

    def broken(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(engine, "_decode_batch", broken)
    try:
        async with TeacherClient(f"127.0.0.1:{server.port}", retries=0) as client:
            with pytest.raises(TeacherUnavailableError, match="UNAVAILABLE"):
                await client.generate("Hello", SamplingParams(max_new_tokens=4))
            await asyncio.sleep(0.1)
            assert await health_status(server.port) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await server.drain_and_stop()


async def test_bearer_token_auth(test_model_dir, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    server = await start_server(test_model_dir, "hf", token_file=str(token_file))
    address = f"127.0.0.1:{server.port}"
    try:
        async with TeacherClient(address, retries=0) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await anonymous.list_models()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in anonymous.generate_stream("Hi"):
                    pass
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with TeacherClient(address, token="wrong", retries=0) as wrong:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await wrong.list_models()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with TeacherClient(address, token="s3cret") as authorised:
            assert (await authorised.list_models())[0].name == "smol"
        # probes need no token
        assert await health_status(server.port) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.drain_and_stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
async def test_tls(test_model_dir, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    server = await start_server(test_model_dir, "hf", tls_cert=str(cert), tls_key=str(key))
    try:
        async with TeacherClient(f"localhost:{server.port}", tls_ca=str(cert)) as client:
            assert (await client.tokenize("hello")).count > 0
    finally:
        await server.drain_and_stop()


async def test_unreachable_teacher_gives_clear_error():
    async with TeacherClient("127.0.0.1:1", retries=2, backoff_s=0.01) as client:
        with pytest.raises(TeacherUnavailableError, match="did not answer ListModels after 3"):
            await client.list_models()


async def test_client_balances_replicas_and_fails_over(test_model_dir):
    """Scaling out: one client over a list of replicas spreads calls round-robin, and
    a replica that is down costs a retry on the next one, not an error."""
    replicas = [await start_server(test_model_dir, "hf") for _ in range(2)]
    try:
        addresses = [f"127.0.0.1:{r.port}" for r in replicas]
        params = SamplingParams(max_new_tokens=2)
        async with TeacherClient(addresses, backoff_s=0.01) as client:
            await asyncio.gather(*(client.generate_batch([CHAT], params) for _ in range(8)))
        served = [r.service.hosts["smol"].served for r in replicas]
        assert served == [4, 4]
        async with TeacherClient(["127.0.0.1:1", *addresses], backoff_s=0.01) as client:
            for _ in range(6):
                results = await client.generate_batch([CHAT], params)
                assert results[0][0].text
        assert sum(r.service.hosts["smol"].served for r in replicas) == 8 + 6
    finally:
        for r in replicas:
            await r.drain_and_stop()


def test_sigterm_drains_the_cli_server(test_model_dir):
    """The real `distill-teacher serve` process: SIGTERM lets a running stream finish."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "teacher.cli", "serve", "--model", f"smol={test_model_dir}",
         "--engine", "hf", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )

    async def scenario():
        async with TeacherClient(f"127.0.0.1:{port}", retries=0) as client:
            await client.wait_ready(timeout_s=120)
            stream = asyncio.create_task(client.generate("Count: 1, 2,", SamplingParams(
                max_new_tokens=30, min_new_tokens=30)))
            await asyncio.sleep(0.5)
            proc.terminate()
            (result,) = await stream
            return result

    try:
        loop = asyncio.new_event_loop()
        result = loop.run_until_complete(scenario())
        loop.close()
        assert result.completion_tokens == 30 and result.stop_reason == "max_tokens"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.stdout.read()
    assert "draining" in output and "stopped" in output
