"""Prepare an lm-evaluation-harness run on the same local data as ``distill-eval``.

lm-eval reads its datasets from the Hugging Face hub; this writes task YAMLs that
``include`` lm-eval's own ``gsm8k_cot`` and ``wikitext`` definitions (so prompts,
filters and metrics are lm-eval's) and only swap the dataset for local files:
GSM8K's ``test.jsonl`` and WikiText-2's test file split into pages with
:func:`teacher.core.tasks.wikitext_documents` (what ``EleutherAI/wikitext_document_level``
holds). Used only for the cross-check in ``docs/eval-crosscheck.md``; lm-eval is not
a dependency of the project.

    python -m eval.crosscheck --out /tmp/lmeval-tasks
    lm_eval --include_path /tmp/lmeval-tasks --tasks gsm8k_cot_local,wikitext_local ...
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from teacher.core.tasks import default_data_dir, wikitext_documents


def _lm_eval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("lm_eval is not installed: pip install lm-eval==0.4.13")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def write_tasks(out: Path, data_dir: Path) -> list[Path]:
    """Write the two task YAMLs (and the wikitext pages file) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tasks = _lm_eval_tasks_dir()
    pages = wikitext_documents((data_dir / "wikitext-2" / "test.txt").read_text(encoding="utf-8"))
    pages_file = out / "wikitext_test_pages.jsonl"
    with pages_file.open("w", encoding="utf-8") as f:
        for page in pages:
            f.write(json.dumps({"page": page}, ensure_ascii=False) + "\n")
    gsm8k = out / "gsm8k_cot_local.yaml"
    gsm8k.write_text(
        f"include: {tasks / 'gsm8k' / 'gsm8k-cot.yaml'}\n"
        "task: gsm8k_cot_local\n"
        "tag: []\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {data_dir / 'gsm8k' / 'test.jsonl'}\n",
        encoding="utf-8",
    )
    wikitext = out / "wikitext_local.yaml"
    wikitext.write_text(
        f"include: {tasks / 'wikitext' / 'wikitext.yaml'}\n"
        "task: wikitext_local\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        "training_split: null\n"
        "validation_split: null\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {pages_file}\n",
        encoding="utf-8",
    )
    return [gsm8k, wikitext]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the task YAMLs")
    parser.add_argument("--data-dir", type=Path, default=None, help="benchmark data root")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    if data_dir is None:
        raise SystemExit("no data dir: pass --data-dir or set $DISTILL_DATA_DIR")
    for path in write_tasks(args.out, Path(data_dir)):
        print(path)


if __name__ == "__main__":
    main()
