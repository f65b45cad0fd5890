"""``distill-student``: train a LoRA student (``distill-student train --help``), or
distill it on-policy from a teacher server (``distill-student on-policy --help``)."""

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

    on_policy = sub.add_parser(
        "on-policy", help="on-policy distillation: the student samples, the teacher scores",
        description="On-policy distillation into a LoRA student: each step the student samples "
                    "completions of task prompts, the teacher scores every sampled token "
                    "(its Score API) and the student follows the per-token reverse KL "
                    "(sampled-token estimator). Settings come from --config (YAML) and "
                    "key=value overrides (e.g. teacher.address=HOST:PORT train.max_steps=20 "
                    "sampling.samples_per_prompt=4 prompts.limit=32).")
    on_policy.add_argument("--config", help="YAML config (the keys of "
                                            "student.on_policy_config.OnPolicyConfig)")
    on_policy.add_argument("--out", required=True, help="the run directory to write")
    on_policy.add_argument("--data-dir", help="benchmark data root (default: $DISTILL_DATA_DIR "
                                              "or ../shared/data)")
    group = on_policy.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue an interrupted run in --out from its last checkpoint")
    group.add_argument("--overwrite", action="store_true",
                       help="replace a run already in --out")
    on_policy.add_argument("overrides", nargs="*", metavar="key=value",
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

    errors: tuple[type[Exception], ...] = (ConfigError, StudentError, RecordError, RunDirError,
                                           DataFormatError, FileNotFoundError)
    if args.command == "on-policy":
        from teacher.serving.client import TeacherUnavailableError

        errors = (*errors, TeacherUnavailableError)
    try:
        overrides = list(args.overrides)
        if args.data_dir:
            overrides.append(f"data_dir={args.data_dir}")
        if args.command == "on-policy":
            from student.on_policy import train_on_policy
            from student.on_policy_config import load_on_policy_config

            train_on_policy(load_on_policy_config(args.config, overrides), args.out,
                            resume=args.resume, overwrite=args.overwrite)
            return 0
        config = load_train_config(args.config, overrides)
        from student.trainer import train

        train(config, args.out, resume=args.resume, overwrite=args.overwrite)
    except errors as exc:
        print(f"distill-student: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
