"""Prepare an lm-evaluation-harness run on the same local data as ``distill-eval``.

lm-eval reads its datasets from the Hugging Face hub; this writes task YAMLs that
``include`` lm-eval's own ``gsm8k_cot`` and ``wikitext`` definitions (so prompts,
filters and metrics are lm-eval's) and only swap the dataset for local files:
GSM8K's ``test.jsonl`` and WikiText-2's test file split into pages with
:func:`teacher.core.tasks.wikitext_documents` (what ``EleutherAI/wikitext_document_level``
holds). lm-eval has no task with the suites' boxed prompt (``gsm8k-cot-boxed``), so
``gsm8k_boxed_local`` spells it out in lm-eval's task YAML (run it with
``--apply_chat_template --system_instruction`` and the template's system turn), with
lm-eval's gsm8k exact_match settings and filters built from lm-eval's own functions.
Used only for the cross-check in ``docs/eval-crosscheck.md``; lm-eval is not a
dependency of the project.

    python -m eval.crosscheck --out /tmp/lmeval-tasks
    lm_eval --include_path /tmp/lmeval-tasks --tasks gsm8k_cot_local,wikitext_local ...
    python -m eval.crosscheck --agree LMEVAL_OUT/.../samples_gsm8k_boxed_local_*.jsonl \\
        DISTILL_OUT/items.jsonl
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

from teacher.core.tasks import GSM8K_METRIC, default_data_dir, wikitext_documents
from teacher.core.tasks.gsm8k import GSM8K_BOXED_STRICT, GSM8K_COT_BOXED

# The lm-eval side of the boxed prompt's flexible extraction, from lm-eval's own parts
# (not the project's port, which it checks): the hendrycks_math boxed rule, then the
# gsm8k flexible-extract regex filter. "{,}" -> "," is the project's addition, copied.
_BOXED_FILTER = '''"""Filters of gsm8k_boxed_local, written by distill's eval/crosscheck.py."""

from lm_eval.filters.extraction import RegexFilter
from lm_eval.tasks.hendrycks_math.utils import last_boxed_only_string, remove_boxed

# lm_eval/tasks/gsm8k/gsm8k.yaml, filter "flexible-extract".
_FLEXIBLE = RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)


def _flexible(text):
    boxed = last_boxed_only_string(text)
    if boxed is not None:
        try:
            content = remove_boxed(boxed)
        except AssertionError:  # a \\fbox
            content = None
        if content is not None:
            found = _FLEXIBLE.apply([[content.replace("{,}", ",")]], None)[0][0]
            if found != _FLEXIBLE.fallback:
                return found
    return _FLEXIBLE.apply([[text]], None)[0][0]


def flexible_extract(resps, docs):
    return [[_flexible(r) for r in rs] for rs in resps]
'''


def _yaml_str(text: str) -> str:
    """A YAML double-quoted scalar (JSON's escaping is valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def gsm8k_boxed_task(data_dir: Path, max_gen_toks: int) -> str:
    """The task YAML of the boxed prompt: the template's user turn as doc_to_text
    (its system turn goes in as ``--system_instruction``), greedy until ``<|im_end|>``."""
    user = GSM8K_COT_BOXED.text.replace("{question}", "{{question}}").replace("{{}}", "{}")
    ignores = "".join(f"      - {_yaml_str(r)}\n" for r in GSM8K_METRIC["regexes_to_ignore"])
    return (
        "task: gsm8k_boxed_local\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {data_dir / 'gsm8k' / 'test.jsonl'}\n"
        "output_type: generate_until\n"
        "test_split: test\n"
        f"doc_to_text: {_yaml_str(user)}\n"
        # lm-eval gsm8k-cot.yaml's doc_to_target: the text after the last "####".
        "doc_to_target: \"{{answer.split('####')[-1].strip()}}\"\n"
        "num_fewshot: 0\n"
        "generation_kwargs:\n"
        "  until: [\"<|im_end|>\"]\n"
        "  do_sample: false\n"
        "  temperature: 0.0\n"
        f"  max_gen_toks: {max_gen_toks}\n"
        "metric_list:\n"
        "  - metric: exact_match\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        f"    ignore_case: {str(GSM8K_METRIC['ignore_case']).lower()}\n"
        f"    ignore_punctuation: {str(GSM8K_METRIC['ignore_punctuation']).lower()}\n"
        "    regexes_to_ignore:\n"
        f"{ignores}"
        "filter_list:\n"
        "  - name: strict-match\n"
        "    filter:\n"
        "      - function: regex\n"
        f"        regex_pattern: {_yaml_str(GSM8K_BOXED_STRICT.pattern)}\n"
        "        group_select: -1\n"
        "      - function: take_first\n"
        "  - name: flexible-extract\n"
        "    filter:\n"
        "      - function: custom\n"
        "        filter_fn: !function gsm8k_boxed_filters.flexible_extract\n"
        "      - function: take_first\n"
        "metadata:\n"
        f"  template: {GSM8K_COT_BOXED.key}\n"
    )


def _lm_eval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("lm_eval is not installed: pip install lm-eval==0.4.13")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def write_tasks(out: Path, data_dir: Path, max_gen_toks: int = 512) -> list[Path]:
    """Write the task YAMLs (and the wikitext pages file, the boxed task's filter
    module) into ``out``; ``max_gen_toks``: the boxed task's generation budget."""
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
    (out / "gsm8k_boxed_filters.py").write_text(_BOXED_FILTER, encoding="utf-8")
    boxed = out / "gsm8k_boxed_local.yaml"
    boxed.write_text(gsm8k_boxed_task(data_dir, max_gen_toks), encoding="utf-8")
    return [gsm8k, wikitext, boxed]


def agreement(samples: Path, items: Path) -> dict[str, Any]:
    """Per item, lm-eval's ``--log_samples`` file of a gsm8k task next to distill-eval's
    ``items.jsonl`` of the same test items (lm-eval doc ``i`` is ``gsm8k/test/<i>``):
    whether the generated text is the same, both filters' answers and scores."""
    lm: dict[int, dict[str, Any]] = {}
    for line in samples.read_text(encoding="utf-8").splitlines():
        s = json.loads(line)
        doc = lm.setdefault(s["doc_id"], {"output": s["resps"][0][0], "target": s["target"]})
        doc[s["filter"]] = (s["filtered_resps"][0], float(s["exact_match"]))
    ours = {}
    for line in items.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r.get("metric", "gsm8k") == "gsm8k" and r.get("subject", "model") == "model":
            ours[r["id"]] = r
    rows = []
    for doc_id in sorted(lm):
        a, b = lm[doc_id], ours.get(f"gsm8k/test/{doc_id:06d}")
        if b is None:
            continue
        rows.append({
            "doc": doc_id, "target": a["target"], "same_output": a["output"] == b["output"],
            "lm_eval": {"strict": a.get("strict-match"), "flexible": a.get("flexible-extract")},
            "distill": {"strict": (b["answer_strict"], b["strict_match"]),
                        "flexible": (b["answer_flexible"], b["flexible_extract"])},
        })
    agree = {f: sum(r["lm_eval"][f] is not None and tuple(r["lm_eval"][f]) == r["distill"][f]
                    for r in rows) for f in ("strict", "flexible")}
    return {"n": len(rows), "same_output": sum(r["same_output"] for r in rows),
            "agree": agree, "rows": rows}


def agreement_table(result: dict[str, Any]) -> str:
    """The markdown lines docs/eval-crosscheck.md shows."""
    def cell(pair: Any) -> str:
        return "–" if pair is None else f"`{pair[0]}`"

    lines = ["| doc | target | lm-eval strict / flexible | distill-eval strict / flexible "
             "| same output |", "|---|---:|---|---|:-:|"]
    for r in result["rows"]:
        lm, ours = r["lm_eval"], r["distill"]
        lines.append(f"| {r['doc']} | {r['target']} | {cell(lm['strict'])} / "
                     f"{cell(lm['flexible'])} | {cell(ours['strict'])} / "
                     f"{cell(ours['flexible'])} | {'yes' if r['same_output'] else 'no'} |")
    n = result["n"]
    lines.append(f"\nsame output {result['same_output']}/{n}; answer and score agree: strict "
                 f"{result['agree']['strict']}/{n}, flexible {result['agree']['flexible']}/{n}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for the task YAMLs")
    parser.add_argument("--agree", type=Path, nargs=2, metavar=("SAMPLES", "ITEMS"),
                        help="instead: compare lm-eval's samples_*.jsonl with distill-eval's "
                             "items.jsonl, per item")
    parser.add_argument("--data-dir", type=Path, default=None, help="benchmark data root")
    parser.add_argument("--max-gen-toks", type=int, default=512,
                        help="gsm8k_boxed_local's max_gen_toks (the suite's gsm8k.max_new_tokens)")
    args = parser.parse_args(argv)
    if args.agree:
        print(agreement_table(agreement(*args.agree)))
        return
    if args.out is None:
        parser.error("--out is required (or --agree)")
    data_dir = args.data_dir or default_data_dir()
    if data_dir is None:
        raise SystemExit("no data dir: pass --data-dir or set $DISTILL_DATA_DIR")
    for path in write_tasks(args.out, Path(data_dir), args.max_gen_toks):
        print(path)


if __name__ == "__main__":
    main()
