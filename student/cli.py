"""``distill-student``: train a LoRA student (``distill-student train --help``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill-student",
        description="Fine-tune a student model with LoRA (TRL SFTTrainer + peft) on teacher "
                    "records or on a task's ground truth.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train a LoRA student into a run directory",
        description="Train a LoRA student. Settings come from --config (YAML) and key=value "
                    "overrides (e.g. data.subset=0.5 sft.num_train_epochs=2 lora.r=8).",
        epilog="Multi-process: accelerate launch [--config_file configs/accelerate/X.yaml] "
               "-m student.cli train ...")
    train.add_argument("--config", help="YAML config (configs/student/*.yaml)")
    train.add_argument("--out", required=True, help="the run directory to write")
    train.add_argument("--data-dir", help="benchmark data root (default: $DISTILL_DATA_DIR "
                                          "or ../shared/data)")
    group = train.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue an interrupted run in --out from its last checkpoint")
    group.add_argument("--overwrite", action="store_true",
                       help="replace a run already in --out")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides (YAML values; dotted keys for nested settings)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imported here so that --help stays fast (TRL and torch load in seconds).
    from student.config import load_train_config
    from student.data import StudentError
    from teacher.core.config import ConfigError
    from teacher.core.records import RecordError
    from teacher.core.rundir import RunDirError
    from teacher.core.tasks import DataFormatError

    try:
        overrides = list(args.overrides)
        if args.data_dir:
            overrides.append(f"data_dir={args.data_dir}")
        config = load_train_config(args.config, overrides)
        from student.trainer import train

        train(config, args.out, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, StudentError, RecordError, RunDirError, DataFormatError,
            FileNotFoundError) as exc:
        print(f"distill-student: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
