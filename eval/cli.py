"""``distill-eval``: evaluate a model or a student run, and compare runs.

    distill-eval run --model BASE [--adapter RUN_DIR] --suite SUITE --out DIR
    distill-eval compare RESULTS... --out DIR
    distill-eval suites
    distill-eval experiment --config configs/experiments/NAME.yaml --out DIR

Heavy imports (torch, transformers, matplotlib) happen inside the commands.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distill-eval",
        description="Evaluate a base model or a student run (target gain, forgetting, "
        "memorization) and compare runs.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run a suite of metrics on one model",
        description="Run a suite on BASE, or on BASE + the LoRA adapter of a student run "
        "directory (then the base model is evaluated too, from the cache when it can be, "
        "and every number is also reported as its change from the base).",
    )
    run.add_argument("--model", required=True,
                     help="base model: catalogue name (e.g. qwen2.5-coder-0.5b-instruct) or dir")
    run.add_argument("--adapter", type=Path, default=None, metavar="RUN_DIR",
                     help="student run directory (manifest.json, adapter/, ...)")
    run.add_argument("--suite", default="smoke",
                     help="suite name (smoke, quick, standard, full) or a YAML path")
    run.add_argument("--out", type=Path, default=None,
                     help="output folder (default: RUN_DIR/eval/SUITE, or runs/eval/SUITE)")
    run.add_argument("--metrics", default=None,
                     help="comma-separated subset of the suite's metrics")
    run.add_argument("--engine", choices=["hf", "vllm"], default=None,
                     help="engine (default: the suite's)")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a suite setting, e.g. gsm8k.limit=10")
    run.add_argument("--data-dir", type=Path, default=None,
                     help="benchmark data (default: $DISTILL_DATA_DIR or ../shared/data)")
    run.add_argument("--cache-dir", type=Path, default=None,
                     help="result cache (default: $DISTILL_EVAL_CACHE or ~/.cache/distill/eval)")
    run.add_argument("--no-cache", action="store_true", help="recompute everything")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    cmp_ = sub.add_parser(
        "compare",
        help="compare evaluated runs: report.md, report.json, plots",
        description="Compare base vs ground-truth-trained vs distilled arms from their "
        "recorded results. Each RESULT is a results.json, a folder holding one, or a run "
        "directory with eval/<suite>/results.json.",
    )
    cmp_.add_argument("results", nargs="+", type=Path, metavar="RESULT")
    cmp_.add_argument("--out", type=Path, required=True, help="report folder")
    cmp_.add_argument("--suite", default=None,
                      help="which eval/<suite>/ of a run directory to read")

    sub.add_parser("suites", help="list the shipped suites")

    exp = sub.add_parser(
        "experiment",
        help="distilled vs human-data runs end to end: generate, train, eval, compare",
        description="Run an experiment config: the teacher arms' data, one LoRA student per "
        "arm and seed, the eval suite on the base and every run, and the report. Every "
        "stage is cached in --out: re-running continues after a kill and redoes nothing "
        "that is finished; adding an arm runs only that arm.",
    )
    exp.add_argument("--config", type=Path, required=True,
                     help="experiment YAML (e.g. configs/experiments/demo.yaml)")
    exp.add_argument("--out", type=Path, default=None,
                     help="experiment directory (default: runs/experiments/NAME)")
    exp.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a config key, e.g. examples=16")
    exp.add_argument("--data-dir", type=Path, default=None,
                     help="benchmark data (default: the config's, $DISTILL_DATA_DIR or "
                     "../shared/data)")
    exp.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _run(args: argparse.Namespace) -> int:
    from eval.cache import ResultCache
    from eval.runner import run_eval_sync
    from eval.suite import load_suite

    overrides = list(args.overrides)
    if args.metrics:
        overrides.append(f"metrics=[{args.metrics}]")
    if args.engine:
        overrides.append(f"engine.name={args.engine}")
    suite = load_suite(args.suite, overrides)
    out = args.out
    if out is None:
        out = (args.adapter / "eval" if args.adapter else Path("runs/eval")) / suite.name
    cache = ResultCache(args.cache_dir, enabled=not args.no_cache)
    results = run_eval_sync(args.model, suite, out, adapter=args.adapter,
                            data_dir=args.data_dir, cache=cache, progress=not args.quiet)
    from eval.report import results_table

    print(results_table(results))
    print(f"\nwrote {out / 'results.json'} (cache: {results['cache']['hits']} hits, "
          f"{results['cache']['misses']} misses)")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from eval.compare import compare

    report = compare(args.results, args.out, suite=args.suite)
    print(report["markdown"])
    print(f"\nwrote {args.out / 'report.md'}, report.json and {len(report['plots'])} plot(s)")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from eval.experiment import headline, load_experiment, run_experiment, summary_line

    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides.append(f"data_dir={args.data_dir}")
    config = load_experiment(args.config, overrides)
    out = args.out or Path("runs/experiments") / config.name
    record = run_experiment(config, out, progress=not args.quiet, quiet=args.quiet)
    print(headline(out))
    print(f"\n{summary_line(record)}")
    print(f"report: {record['report']}")
    for plot in record["plots"]:
        print(f"plot:   {plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from eval.metrics import UnknownMetricError
    from eval.suite import UnknownSuiteError
    from teacher.core.config import ConfigError
    from teacher.core.rundir import RunDirError

    expected: tuple[type[BaseException], ...] = (
        ConfigError, UnknownMetricError, UnknownSuiteError, RunDirError, FileNotFoundError,
    )
    try:
        from eval.compare import CompareError
        from eval.experiment import ExperimentError
        from eval.loading import AdapterMismatchError
        from student.data import StudentError
        from teacher.core.tasks import DataFormatError

        expected += (AdapterMismatchError, CompareError, DataFormatError, ExperimentError,
                     StudentError)
        if args.command == "experiment":
            return _experiment(args)
        if args.command == "run":
            return _run(args)
        if args.command == "compare":
            return _compare(args)
        from eval.suite import list_suites, load_suite

        for name in list_suites():
            print(f"{name:10} {load_suite(name).description}")
        return 0
    except expected as e:
        print(f"distill-eval: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
