"""Score throughput with top-k vs without, through gRPC (issue 16's offline logit KD).

    .venv/bin/python benchmarks/score_topk.py --model qwen2.5-coder-0.5b-instruct --engine hf

A real local server (``local_teacher``) scores GSM8K (question, reference answer)
pairs — what the data job's top-k pass scores — in requests of --batch items, with
top_k = 0 and each --top-k, --repeats times each (alternating, after one warm-up
request), and reports completion tokens/s, seconds per request and reply size per
token. The Score cache is bypassed for top_k = 0 (each repeat scores other
completions: suffixed with the repeat index), so both measure the forward pass.
Prints a table and writes JSON under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def gsm8k_pairs(n: int, data_dir: str | None) -> list[tuple[list[dict], str]]:
    from teacher.core.tasks import get_task

    task = get_task("gsm8k")
    examples = task.load("train", data_dir=data_dir, limit=n)
    return [(task.prompt(e), task.reference_response(e)) for e in examples]


async def run(args) -> dict:
    from teacher.serving import convert
    from teacher.serving.engine import EngineSettings
    from teacher.serving.local import local_teacher

    pairs = gsm8k_pairs(args.batch, args.data_dir)
    settings = EngineSettings(name=args.engine, dtype="float32", max_model_len=2048)
    timings: dict[int, list[float]] = {k: [] for k in [0, *args.top_k]}
    tokens = 0
    reply_bytes: dict[int, int] = {}
    async with local_teacher([f"m={args.model}"], settings, timeout_s=None) as (client, _):
        await client.score(pairs[:2], top_k=max(args.top_k))  # warm-up
        for repeat in range(args.repeats):
            for k in timings:
                # A fresh completion per repeat: no request is answered from the cache.
                batch = [(p, f"{c}\n({repeat})") for p, c in pairs]
                started = time.perf_counter()
                results = await client.score(batch, top_k=k)
                timings[k].append(time.perf_counter() - started)
                tokens = sum(r.num_tokens for r in results)
                reply_bytes[k] = sum(
                    len(convert.score_result_to_pb(r, False).SerializeToString())
                    for r in results)
                assert all((r.top_logprobs is None) == (k == 0) for r in results)
        info = (await client.list_models())[0]
    rows = []
    base = statistics.median(timings[0])
    for k, seconds in timings.items():
        median = statistics.median(seconds)
        rows.append({
            "top_k": k, "items": len(pairs), "completion_tokens": tokens,
            "median_s": round(median, 3), "min_s": round(min(seconds), 3),
            "tokens_per_s": round(tokens / median, 1),
            "relative_time": round(median / base, 3),
            "reply_bytes_per_token": round(reply_bytes[k] / tokens, 1),
        })
    return {
        "benchmark": "score_topk",
        "model": args.model, "engine": info.engine, "engine_version": info.engine_version,
        "dtype": info.dtype, "device": info.device, "vocab_size": info.vocab_size,
        "batch": args.batch, "repeats": args.repeats,
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "rows": rows,
    }


def table(result: dict) -> str:
    lines = ["| top_k | items | completion tokens | median s | tokens/s | time vs k=0 "
             "| reply bytes/token |", "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['top_k']} | {r['items']} | {r['completion_tokens']} | {r['median_s']:.2f} "
              f"| {r['tokens_per_s']:.0f} | {r['relative_time']:.2f}x "
              f"| {r['reply_bytes_per_token']:.0f} |" for r in result["rows"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="catalogue name or prepared directory")
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--top-k", type=int, nargs="+", default=[20])
    parser.add_argument("--batch", type=int, default=8, help="items per Score request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(f"\nScore throughput, {result['model']} on {result['engine']} "
          f"({result['dtype']}, {result['device']}), {args.batch} GSM8K references per request, "
          f"median of {args.repeats}:\n")
    print(table(result))
    out = args.out or RESULTS / f"score_topk_{Path(args.model).name}_{result['engine']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
