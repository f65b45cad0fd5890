"""Teacher under load and faults (issue 14): a real ``distill-teacher serve`` process.

    .venv/bin/python benchmarks/teacher_load.py --engine hf
    .venv/bin/python benchmarks/teacher_load.py --engine vllm

Starts the server on a free loopback port, then, while a prober checks gRPC health
every 0.2 s, runs three phases:

* ``streams``: 64 concurrent Generate streams;
* ``mix``: 200 concurrent requests over every RPC (Generate, GenerateBatch, Score,
  Tokenize, ListModels, GetLoad, Distill);
* ``faults``: time limits of 1e-9 s, cancels in the first milliseconds, a 10 MB
  prompt, malformed bytes (corrupt, invalid UTF-8, deep nesting), a 100 KB model
  name, a batch over the admission limit — each with the status it must get.

Prints, per phase, the count of each status code (and any that were not expected),
p50/p99 latency, the health statuses seen and the slowest probe, and the server's
RSS (with its child processes: vLLM's engine core) before and after; writes JSON to
``benchmarks/results/teacher_load_<engine>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from teacher.api import teacher_pb2 as pb
from teacher.api import teacher_pb2_grpc as pb_grpc

RESULTS = Path(__file__).parent / "results"
OK = "OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


class Prober:
    """Checks health every ``interval`` s; remembers statuses and probe latencies."""

    def __init__(self, address: str, interval: float = 0.2):
        self.address, self.interval = address, interval
        self.statuses: collections.Counter = collections.Counter()
        self.latencies: list[float] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                started = time.perf_counter()
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.aio.AioRpcError as err:
                    name = f"probe failed: {err.code().name}"
                self.latencies.append(time.perf_counter() - started)
                self.statuses[name] += 1
                await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return {"statuses": dict(self.statuses), "probes": len(self.latencies),
                "max_probe_s": round(max(self.latencies, default=0.0), 4)}


class Tally:
    def __init__(self) -> None:
        self.codes: collections.Counter = collections.Counter()
        self.unexpected: collections.Counter = collections.Counter()
        self.latencies: list[float] = []

    async def call(self, kind: str, make, expect: tuple[str, ...] = (OK,)) -> None:
        started = time.perf_counter()
        try:
            result = make()
            if hasattr(result, "__aiter__"):
                async for _ in result:
                    pass
            else:
                await result
            code = OK
        except grpc.aio.AioRpcError as err:
            code = err.code().name
        except asyncio.CancelledError:
            code = "CANCELLED"
        self.latencies.append(time.perf_counter() - started)
        self.codes[code] += 1
        if code not in expect:
            self.unexpected[f"{kind}: {code}"] += 1

    def summary(self) -> dict:
        lat = sorted(self.latencies)

        def q(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else 0.0

        return {"requests": len(lat), "codes": dict(self.codes),
                "unexpected": dict(self.unexpected), "p50_s": q(0.5), "p99_s": q(0.99),
                "mean_s": round(statistics.fmean(lat), 3) if lat else 0.0}


def sampling(tokens: int, **kw) -> pb.SamplingParams:
    return pb.SamplingParams(max_new_tokens=tokens, seed=0, **kw)


CHAT = pb.Prompt(chat=pb.ChatMessages(messages=[
    pb.ChatMessage(role="user", content="What is 12 + 30? Answer with a number.")]))


async def streams(stub, tally: Tally, n: int, tokens: int) -> None:
    await asyncio.gather(*(
        tally.call("Generate", lambda i=i: stub.Generate(pb.GenerateRequest(
            prompt=pb.Prompt(text=f"Story {i}: Once upon a time"),
            sampling=sampling(tokens, min_new_tokens=tokens))))
        for i in range(n)))


async def mix(stub, tally: Tally, n: int, tokens: int) -> None:
    example = pb.TaskExample(id="load-0", task="gsm8k", split="train",
                             question="What is 12 + 30?", reference="12 + 30 = 42\n#### 42",
                             target="42")
    kinds = [
        ("Generate", lambda: stub.Generate(pb.GenerateRequest(
            prompt=CHAT, sampling=sampling(tokens)))),
        ("GenerateBatch", lambda: stub.GenerateBatch(pb.GenerateBatchRequest(
            prompts=[CHAT, pb.Prompt(text="The sky is")], sampling=sampling(tokens)))),
        ("Score", lambda: stub.Score(pb.ScoreRequest(items=[
            pb.ScoreItem(prompt=CHAT, completion=f"The answer is {random.randint(0, 99)}.")]))),
        ("Tokenize", lambda: stub.Tokenize(pb.TokenizeRequest(prompt=CHAT))),
        ("ListModels", lambda: stub.ListModels(pb.ListModelsRequest())),
        ("GetLoad", lambda: stub.GetLoad(pb.GetLoadRequest())),
        ("Distill", lambda: stub.Distill(pb.DistillRequest(
            example=example, mode=pb.DISTILL_MODE_REWRITE, sampling=sampling(tokens)))),
    ]
    # Admission may refuse work beyond max_queue: that is its job, not an error.
    await asyncio.gather(*(
        tally.call(kinds[i % len(kinds)][0], kinds[i % len(kinds)][1],
                   expect=(OK, "RESOURCE_EXHAUSTED"))
        for i in range(n)))


async def faults(channel, stub, tally: Tally, repeats: int) -> None:
    rng = random.Random(14)
    for _ in range(repeats):  # a limit that has passed on arrival
        await tally.call("time_limit=1e-9", lambda: stub.Generate(pb.GenerateRequest(
            prompt=CHAT, sampling=sampling(16, time_limit_s=1e-9))))
        await asyncio.sleep(0.02)
    for _ in range(repeats):  # cancelled in the first milliseconds
        call = stub.Generate(pb.GenerateRequest(prompt=CHAT, sampling=sampling(16)))
        await asyncio.sleep(rng.uniform(0, 0.004))
        call.cancel()

        async def drain(call=call):
            async for _ in call:
                pass

        await tally.call("early cancel", drain, expect=("CANCELLED",))
    invalid = ("INVALID_ARGUMENT",)
    await tally.call("10 MB prompt", lambda: stub.Generate(pb.GenerateRequest(
        prompt=pb.Prompt(text="x " * (5 * 2**20)), sampling=sampling(4))), expect=invalid)
    await tally.call("100 KB model name", lambda: stub.Tokenize(pb.TokenizeRequest(
        model="m" * 100_000, prompt=CHAT)), expect=invalid)
    raw = channel.unary_unary("/distill.teacher.v1.Teacher/Tokenize")
    for name, data in {"corrupt bytes": b"\xff\xff\xff\xff\x0f",
                       "invalid UTF-8": b"\x0a\x02\xc3\x28",
                       "deep nesting": b"\x7b" * 200 + b"\x7c" * 200}.items():
        await tally.call(name, lambda data=data: raw(data, timeout=10), expect=invalid)
    await tally.call("batch over admission", lambda: stub.GenerateBatch(pb.GenerateBatchRequest(
        prompts=[CHAT] * 128, sampling=sampling(4, n=4))), expect=("RESOURCE_EXHAUSTED",))


async def wait_ready(address: str, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError("server not ready")


async def wait_idle(stub, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        load = (await stub.GetLoad(pb.GetLoadRequest())).models[0]
        if load.running == 0 and load.waiting == 0:
            break
        await asyncio.sleep(0.2)
    return {"running": load.running, "waiting": load.waiting}


async def run(args, address: str, proc: subprocess.Popen) -> dict:
    await wait_ready(address, proc)
    out: dict = {"engine": args.engine, "model": args.model, "cpus": os.cpu_count(),
                 "python": platform.python_version()}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.TeacherStub(channel)
        # Warm up (first-call allocations belong to the baseline, not to the load).
        await stub.GenerateBatch(pb.GenerateBatchRequest(prompts=[CHAT], sampling=sampling(4)))
        out["rss_before_mb"] = round(rss_mb(proc.pid), 1)
        prober = Prober(address)
        prober.start()
        # The load runs ``rounds`` times: RSS that keeps growing round over round is a
        # leak; RSS that rises once and then stays is the allocator's high-water mark.
        rounds = []
        for round_index in range(args.rounds):
            phases = {}
            for name, body in (
                ("streams", lambda t: streams(stub, t, args.streams, args.tokens)),
                ("mix", lambda t: mix(stub, t, args.mix, args.tokens)),
                ("faults", lambda t: faults(channel, stub, t, args.fault_repeats)),
            ):
                tally = Tally()
                started = time.perf_counter()
                await body(tally)
                phases[name] = {**tally.summary(),
                                "wall_s": round(time.perf_counter() - started, 2)}
                print(f"round {round_index + 1} {name}: {json.dumps(phases[name])}", flush=True)
            await wait_idle(stub)
            await asyncio.sleep(2)  # let freed buffers go back
            rounds.append({"phases": phases, "rss_after_mb": round(rss_mb(proc.pid), 1)})
        out["idle_after"] = await wait_idle(stub)
        # Still serving after everything: one normal request.
        await stub.GenerateBatch(pb.GenerateBatchRequest(prompts=[CHAT], sampling=sampling(4)))
        out["health"] = await prober.stop()
        out["rss_after_mb"] = rounds[-1]["rss_after_mb"]
        out["rounds"] = rounds
    return out


def print_table(result: dict) -> None:
    print(f"\n{result['engine']} · {result['model']} · RSS before {result['rss_before_mb']} MB")
    print(f"{'round':>5} {'phase':<8} {'requests':>8} {'p50 s':>8} {'p99 s':>8}  codes"
          f" (unexpected)")
    for i, r in enumerate(result["rounds"], 1):
        for name, p in r["phases"].items():
            statuses = ", ".join(f"{k} {v}" for k, v in sorted(p["codes"].items()))
            print(f"{i:>5} {name:<8} {p['requests']:>8} {p['p50_s']:>8.3f} {p['p99_s']:>8.3f}"
                  f"  {statuses} ({p['unexpected'] or 'none'})")
        print(f"{i:>5} RSS after: {r['rss_after_mb']} MB")
    h = result["health"]
    print(f"health: {h['statuses']} (slowest probe {h['max_probe_s']:.3f} s); server exit "
          f"{result['server_exit_code']}, tracebacks in log {result['server_log_tracebacks']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["hf", "vllm"], required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--mix", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=8, help="new tokens per generation")
    parser.add_argument("--fault-repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2,
                        help="repeat the phases; RSS after each round tells a leak from a "
                             "high-water mark")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    port = free_port()
    address = f"127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "teacher.cli", "serve", "--model", args.model,
           "--engine", args.engine, "--port", str(port), "--dtype", "float32"]
    log_path = RESULTS / f"teacher_load_{args.engine}.log"
    RESULTS.mkdir(exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            result = asyncio.run(run(args, address, proc))
        finally:
            proc.terminate()
            try:
                result_rc = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                result_rc = proc.wait()
    text = log_path.read_text()
    result["command"] = " ".join(["python", "benchmarks/teacher_load.py", *sys.argv[1:]])
    result["server_exit_code"] = result_rc
    result["server_log_tracebacks"] = text.count("Traceback")
    result["server_log_lines"] = text.count("\n")
    ok = (result["health"]["statuses"].keys() == {"SERVING"}
          and not any(p["unexpected"] for r in result["rounds"] for p in r["phases"].values())
          and result["health"]["max_probe_s"] < 1.0)
    result["ok"] = ok
    out = Path(args.out) if args.out else RESULTS / f"teacher_load_{args.engine}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
