"""``distill-teacher``: serve models, call a server, prepare models.

Subcommands import their dependencies lazily so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys

DEFAULT_PORT = 50051


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=["vllm", "hf"],
        default=None,
        help="inference engine (default: vllm where installed, else hf)",
    )
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, ...")
    p.add_argument("--max-model-len", type=int, default=2048, help="context length to serve")
    p.add_argument(
        "--max-adapters", type=int, default=0,
        help="LoRA adapters a client may load per model at run time (LoadAdapter); 0 (the "
        "default) = none, and vLLM runs without its LoRA layers, whose cost is not measured",
    )
    p.add_argument("--max-lora-rank", type=int, default=16,
                   help="the largest LoRA rank LoadAdapter accepts")
    p.add_argument(
        "--engine-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="engine-specific option, e.g. max_batch_size=16 (hf), "
        "gpu_memory_utilization=0.9 (vllm); repeatable",
    )


def _engine_options(pairs: list[str]) -> dict:
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--engine-option {pair!r}: use KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill-teacher", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve models over gRPC until SIGTERM")
    serve.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]NAME_OR_PATH",
        help="a catalogue name, local path or hub id; repeat to host several "
        "(the first is the default)",
    )
    _add_engine_args(serve)
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default loopback only); any other address needs "
        "--token-file or --insecure",
    )
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without --token-file (a trusted network only)",
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="sequences in flight per model (a request counts prompts x n, a Score its "
        "items) before RESOURCE_EXHAUSTED",
    )
    serve.add_argument(
        "--max-queue-tokens",
        type=int,
        default=524_288,
        help="tokens (prompt + max_new_tokens, or prompt + completion) in flight per model "
        "before RESOURCE_EXHAUSTED; 0 = unbounded",
    )
    serve.add_argument(
        "--max-message-mb", type=float, default=16.0, help="largest request accepted (MiB)"
    )
    serve.add_argument(
        "--max-score-top-k", type=int, default=20,
        help="largest Score top_k; above 20 on vLLM also --engine-option max_logprobs=K",
    )
    serve.add_argument(
        "--max-connection-age",
        type=float,
        default=0.0,
        help="seconds before a client connection is asked to reconnect (0: never)",
    )
    serve.add_argument("--tls-cert", help="PEM certificate chain (enables TLS with --tls-key)")
    serve.add_argument("--tls-key", help="PEM private key")
    serve.add_argument(
        "--token-file", help="require 'authorization: Bearer <token>' from this file"
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds SIGTERM waits for in-flight requests",
    )

    ask = sub.add_parser("ask", help="stream one generation from a running server")
    ask.add_argument("prompt", help="the user message (sent as a chat)")
    ask.add_argument(
        "--address", default=f"localhost:{DEFAULT_PORT}", help="HOST:PORT[,HOST:PORT...]"
    )
    ask.add_argument("--model", default="", help="model name on the server (default: its first)")
    ask.add_argument("--max-new-tokens", type=int, default=256)
    ask.add_argument("--temperature", type=float, default=0.0)
    ask.add_argument("--token-file")

    demo = sub.add_parser(
        "demo", help="start a teacher on a free port, call it over gRPC, and shut it down"
    )
    demo.add_argument(
        "--model",
        default=None,
        help="default: the embedded default teacher (qwen2.5-coder-1.5b-instruct)",
    )
    _add_engine_args(demo)
    demo.add_argument(
        "--question",
        default=(
            "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
            "clips in May. How many clips did Natalia sell altogether in April and May?"
        ),
    )

    _add_generate_parser(sub)

    models = sub.add_parser("models", help="the model catalogue")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    pull = models_sub.add_parser("pull", help="prepare a catalogue model in the cache")
    pull.add_argument("names", nargs="+")
    pull.add_argument("--force", action="store_true", help="prepare again even if present")
    models_sub.add_parser("list", help="list catalogue models and whether they are prepared")
    return parser


def _add_generate_parser(sub) -> None:
    gen = sub.add_parser(
        "generate",
        help="distillation data: a resumable job over the teacher API",
        description="Turn a task split into distillation records (JSONL shards in --out) "
        "with the teacher's Distill RPC: reasoning traces, self-rewrites of the reference "
        "(SDFT) or best-of-N self-outputs scored under --scorer-model. Killed and "
        "restarted with the same command, it skips what is done and finishes the rest.",
    )
    gen.add_argument("--task", required=True, help="gsm8k or bbh/<subtask>")
    gen.add_argument("--split", default="train")
    from teacher.distill.modes import cli_names

    gen.add_argument("--mode", required=True, choices=cli_names())
    where = gen.add_mutually_exclusive_group(required=True)
    where.add_argument("--address", help="teacher server(s): HOST:PORT[,HOST:PORT...]")
    where.add_argument(
        "--in-process",
        action="store_true",
        help="start a teacher server on a free localhost port inside this job",
    )
    gen.add_argument(
        "--model",
        default="",
        metavar="[NAME=]MODEL",
        help="generator: with --address, a model name on the server (default: its "
        "default); with --in-process, a catalogue name or path to load "
        "(default: the student base, qwen2.5-coder-0.5b-instruct, for self-distillation)",
    )
    gen.add_argument(
        "--scorer-model",
        default="",
        metavar="[NAME=]MODEL",
        help="model scoring candidates (the student's base); like --model "
        "(default: the generator)",
    )
    gen.add_argument("--out", required=True, help="output directory (JSONL shards)")
    gen.add_argument("--limit", type=int, default=None, help="only the first N examples")
    gen.add_argument("--sample-seed", type=int, default=None,
                     help="with --limit: N examples drawn with this seed, not the first N")
    gen.add_argument("--data-dir", default=None, help="benchmark data (default: ../shared/data)")
    gen.add_argument(
        "-n",
        "--num-candidates",
        type=int,
        default=0,
        help="k traces / N best-of-N samples / rewrites (default: 4 / 4 / 1)",
    )
    gen.add_argument("--template", default="", help="generation template id or key")
    gen.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="default: 0.7 for trace and best-of-n, 0 (greedy) for rewrite",
    )
    gen.add_argument("--top-p", type=float, default=0.95)
    gen.add_argument(
        "--max-new-tokens", type=int, default=0, help="default: the template's (384/512)"
    )
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--ppl-threshold", type=float, default=2.5)
    gen.add_argument(
        "--keep-incorrect",
        action="store_true",
        help="trace: incorrect rationales may be chosen when none is correct",
    )
    gen.add_argument(
        "--reject-on-failure",
        action="store_true",
        help="no candidate passes: reject the example instead of falling back to the reference",
    )
    gen.add_argument("--concurrency", type=int, default=8, help="examples in flight")
    gen.add_argument(
        "--worker", default="0/1", metavar="I/N",
        help="this worker's share of the examples (by id hash) when N workers write into "
        "the same --out; afterwards one plain run there marks duplicates and writes summary.json",
    )
    gen.add_argument(
        "--top-k", type=int, default=0,
        help="offline logit KD: store the teacher's top-k log-probs per response token "
        "in a side file beside each shard (0 = off)",
    )
    gen.add_argument(
        "--top-k-model", default="", metavar="[NAME=]MODEL",
        help="the teacher giving the top-k; like --model (default: the generator)",
    )
    gen.add_argument(
        "--student-model", default="", metavar="[NAME=]MODEL",
        help="with --top-k: the student, whose vocabulary must equal the teacher's; "
        "like --model",
    )
    gen.add_argument("--no-dedup", action="store_true", help="skip duplicate marking")
    gen.add_argument("--near-dup-threshold", type=float, default=0.85)
    gen.add_argument("--timeout", type=float, default=3600.0, help="seconds per example")
    gen.add_argument("--no-progress", action="store_true")
    gen.add_argument("--token-file")
    _add_engine_args(gen)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "ask":
            return asyncio.run(_ask(args))
        if args.command == "demo":
            return asyncio.run(_demo(args))
        if args.command == "models":
            return _models(args)
        if args.command == "generate":
            return asyncio.run(_generate(args))
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as exc:
        print(f"distill-teacher: error: {exc}", file=sys.stderr)
        return 2
    return 1


def _engine_settings(args):
    from teacher.serving.engine import EngineSettings

    return EngineSettings(
        name=args.engine or "",
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        options=_engine_options(args.engine_option),
        max_adapters=args.max_adapters,
        max_lora_rank=args.max_lora_rank,
    )


def _server_config(args):
    from teacher.serving.server import ServerConfig, parse_model_spec
    from teacher.serving.service import Limits

    return ServerConfig(
        models=[parse_model_spec(m) for m in args.model],
        engine=_engine_settings(args),
        host=args.host,
        port=args.port,
        limits=Limits(max_queue=args.max_queue, max_queue_tokens=args.max_queue_tokens,
                      max_score_top_k=args.max_score_top_k),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token_file=args.token_file,
        insecure=args.insecure,
        drain_timeout_s=args.drain_timeout,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        max_connection_age_s=args.max_connection_age,
    )


def _serve(args) -> int:
    from teacher.serving.server import serve

    return asyncio.run(serve(_server_config(args)))


async def _ask(args) -> int:
    from pathlib import Path

    from teacher.serving.client import TeacherClient
    from teacher.serving.sampling import SamplingParams
    from teacher.serving.service import SampleChunk

    token = Path(args.token_file).read_text().strip() if args.token_file else None
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    async with TeacherClient(args.address, token=token) as client:
        async for event in client.generate_stream(
            [{"role": "user", "content": args.prompt}], params, model=args.model
        ):
            if isinstance(event, SampleChunk):
                print(event.text, end="", flush=True)
            else:
                print(
                    f"\n[{event.completion_tokens} tokens, {event.tokens_per_s:.1f} tok/s, "
                    f"stop: {event.stop_reason}]"
                )
    return 0


async def _demo(args) -> int:
    """Start a real server on a free localhost port, then use it as a client would."""
    import time

    from teacher.core import models
    from teacher.serving.local import local_teacher
    from teacher.serving.sampling import SamplingParams
    from teacher.serving.service import SampleChunk

    name = args.model or models.DEFAULT_TEACHER
    engine = _engine_settings(args).resolved()
    started = time.perf_counter()
    async with local_teacher([f"teacher={name}"], engine) as (client, _):
        print(
            f"teacher {name!r} on {client.addresses[0]} (engine {engine.name}), "
            f"ready in {time.perf_counter() - started:.0f} s"
        )
        await client.wait_ready()
        info = (await client.list_models())[0]
        print(
            f"model: {info.name} rev {info.revision} ctx {info.context_length} "
            f"{info.dtype} on {info.device}"
        )
        prompt = [
            {
                "role": "user",
                "content": args.question
                + " Reason step by step, then give the final answer after '####'.",
            }
        ]
        print(f"\nQ: {args.question}\nA: ", end="", flush=True)
        final = None
        async for event in client.generate_stream(
            prompt, SamplingParams(max_new_tokens=256, seed=0)
        ):
            if isinstance(event, SampleChunk):
                print(event.text, end="", flush=True)
            else:
                final = event
        print(
            f"\n\n[{final.completion_tokens} tokens at {final.tokens_per_s:.1f} tok/s, "
            f"first token after {final.time_to_first_token_s:.2f} s]"
        )
        score = (await client.score([(prompt, final.text)], ppl_threshold=2.5))[0]
        print(
            json.dumps(
                {
                    "score_of_own_answer": {
                        "tokens": score.num_tokens,
                        "mean_nll": round(score.mean_nll, 4),
                        "perplexity": round(score.perplexity, 4),
                        "share_above_ppl_2.5": round(score.frac_above_threshold, 4),
                    }
                },
                indent=2,
            )
        )
    return 0


async def _generate(args) -> int:
    """The data job; in-process, a real local server is started and called like a remote."""
    from pathlib import Path

    import grpc

    from teacher.core import models
    from teacher.distill.job import GenerateConfig, run_job
    from teacher.serving.client import TeacherClient
    from teacher.serving.local import local_teacher
    from teacher.serving.server import parse_model_spec

    try:
        worker = tuple(int(x) for x in args.worker.split("/"))
        assert len(worker) == 2
    except (ValueError, AssertionError):
        raise ValueError(f"--worker {args.worker!r}: use I/N, e.g. 0/4") from None
    config = GenerateConfig.from_settings(
        task=args.task,
        split=args.split,
        mode=args.mode,
        out=Path(args.out),
        limit=args.limit,
        sample_seed=args.sample_seed,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        num_candidates=args.num_candidates,
        template=args.template,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        ppl_threshold=args.ppl_threshold,
        require_correct=not args.keep_incorrect,
        fallback="reject" if args.reject_on_failure else "reference",
        concurrency=args.concurrency,
        worker_index=worker[0],
        num_workers=worker[1],
        dedup=not args.no_dedup,
        near_dup_threshold=args.near_dup_threshold,
        timeout_s=args.timeout,
        progress=not args.no_progress,
        top_k=args.top_k,
    )
    from teacher.distill.job import load_examples

    load_examples(config)  # bad task/split/data dir fail before any model loads
    address = args.address
    async with contextlib.AsyncExitStack() as stack:
        if args.in_process:
            generator = parse_model_spec(args.model or models.DEFAULT_STUDENT)
            specs = [f"{generator.name}={generator.source}"]
            config.model = generator.name
            if args.scorer_model:
                scorer = parse_model_spec(args.scorer_model)
                config.scorer_model = scorer.name
                if scorer.name != generator.name:
                    specs.append(f"{scorer.name}={scorer.source}")
            for option in ("top_k_model", "student_model"):
                spec = getattr(args, option)
                if spec:
                    extra = parse_model_spec(spec)
                    setattr(config, option, extra.name)
                    if all(not s.startswith(f"{extra.name}=") for s in specs):
                        specs.append(f"{extra.name}={extra.source}")
            client, _ = await stack.enter_async_context(
                local_teacher(specs, _engine_settings(args), timeout_s=args.timeout)
            )
            address = client.addresses[0]
        else:
            config.model, config.scorer_model = args.model, args.scorer_model
            config.top_k_model, config.student_model = args.top_k_model, args.student_model
            token = Path(args.token_file).read_text().strip() if args.token_file else None
            client = await stack.enter_async_context(
                TeacherClient(address, token=token, timeout_s=args.timeout)
            )
        try:
            await run_job(client, config)
        except grpc.aio.AioRpcError as err:
            raise RuntimeError(
                f"teacher at {address}: {err.code().name}: {err.details()}"
            ) from err
    return 0


def _models(args) -> int:
    from teacher.core import models

    if args.models_command == "pull":
        for name in args.names:
            path = models.pull(name, force=args.force)
            print(f"{name}: {path}")
        return 0
    for row in models.list_models():
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
