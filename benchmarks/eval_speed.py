"""Eval throughput: a suite's generation through the batched engine vs one at a time.

``distill-eval run`` sends each metric's prompts to the teacher service as one
batch (``TeacherService.generate_batch``; the engine micro-batches them). This
measures examples/s of that path against calling ``TeacherService.generate`` for
one prompt at a time, on the same gsm8k and BBH prompts, greedy, and checks that
both give the same scores. Target: batched >= 3x. Prints a table, writes JSON.

    python benchmarks/eval_speed.py --model smollm2-135m-instruct --n 16

(writes benchmarks/results/eval_speed.json; --out to change)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path
from typing import Any

TARGET_SPEEDUP = 3.0


async def _one_at_a_time(service: Any, prompts: list[Any], max_new: int,
                         stop: tuple[str, ...]) -> list[str]:
    from eval.loading import MODEL_NAME
    from teacher.serving.sampling import SamplingParams
    from teacher.serving.service import SampleResult

    params = SamplingParams(temperature=0.0, seed=0, max_new_tokens=max_new, stop=stop)
    outputs = []
    for prompt in prompts:
        async for event in service.generate(MODEL_NAME, prompt, params):
            if isinstance(event, SampleResult):
                outputs.append(event.text)
    return outputs


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from eval.loading import serve
    from eval.metrics.bbh import score_bbh
    from eval.metrics.gsm8k import score_gsm8k
    from eval.metrics.model import ServedModel
    from teacher.core.models import resolve
    from teacher.core.tasks import get_task
    from teacher.core.templates import get_template
    from teacher.serving.engine import EngineSettings

    gsm8k = get_task("gsm8k")
    tpl = get_template(args.gsm8k_template)
    bbh = get_task(f"bbh/{args.bbh_subtask}")
    exs = gsm8k.load("test", args.data_dir, args.n)
    bexs = bbh.load("test", args.data_dir, args.n)
    suites = {
        "gsm8k": ([gsm8k.prompt(ex, tpl) for ex in exs], tpl.stop,
                  lambda out, i: score_gsm8k(out, exs[i], tpl)["strict_match"]),
        "bbh": ([bbh.prompt(ex) for ex in bexs], bbh.default_template.stop,
                lambda out, i: score_bbh(out, bexs[i])["exact_match"]),
    }
    engine = EngineSettings(name=args.engine, dtype=args.dtype, max_batch_size=args.batch_size)
    rows = []
    async with serve(Path(resolve(args.model)), None, engine) as service:
        model = ServedModel(service)
        # Warm-up: first calls pay one-off costs (allocations, kernels).
        await model.generate([suites["gsm8k"][0][0]], 4, ())
        for name, (prompts, stop, score) in suites.items():
            t0 = time.perf_counter()
            batched = await model.generate(prompts, args.max_new_tokens, stop)
            t_batched = time.perf_counter() - t0
            t0 = time.perf_counter()
            single = await _one_at_a_time(service, prompts, args.max_new_tokens, stop)
            t_single = time.perf_counter() - t0
            same = sum(score(a, i) == score(b, i)
                       for i, (a, b) in enumerate(zip(batched, single, strict=True)))
            rows.append({
                "metric": name, "examples": len(prompts), "max_new_tokens": args.max_new_tokens,
                "batched_s": t_batched, "one_at_a_time_s": t_single,
                "batched_examples_per_s": len(prompts) / t_batched,
                "one_at_a_time_examples_per_s": len(prompts) / t_single,
                "speedup": t_single / t_batched,
                "same_score": same, "same_text": sum(a == b for a, b in
                                                     zip(batched, single, strict=True)),
            })
    return {"model": args.model, "engine": args.engine, "dtype": args.dtype,
            "batch_size": args.batch_size, "machine": platform.machine(),
            "target_speedup": TARGET_SPEEDUP, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--n", type=int, default=16, help="examples per metric")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16, help="engine max batch size")
    parser.add_argument("--gsm8k-template", default="gsm8k-cot-zeroshot")
    parser.add_argument("--bbh-subtask", default="sports_understanding")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_speed.json"))
    args = parser.parse_args(argv)
    report = asyncio.run(bench(args))
    print(f"{'metric':8} {'n':>4} {'batched ex/s':>13} {'1-at-a-time ex/s':>17} "
          f"{'speedup':>8} {'same score':>10}")
    for r in report["rows"]:
        ok = "ok" if r["speedup"] >= TARGET_SPEEDUP else "BELOW TARGET"
        print(f"{r['metric']:8} {r['examples']:>4} {r['batched_examples_per_s']:>13.2f} "
              f"{r['one_at_a_time_examples_per_s']:>17.2f} {r['speedup']:>7.1f}x "
              f"{r['same_score']:>5}/{r['examples']:<4} {ok}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
