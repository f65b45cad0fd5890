"""eval.crosscheck: the lm-eval task of the boxed prompt says what distill-eval does
(lm-eval itself is not installed here; docs/eval-crosscheck.md runs it)."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import yaml

from eval.crosscheck import gsm8k_boxed_task
from teacher.core.tasks import GSM8K_METRIC
from teacher.core.tasks.gsm8k import GSM8K_BOXED_STRICT, GSM8K_COT_BOXED


class _Loader(yaml.SafeLoader):
    """lm-eval's ``!function`` tag, read as its dotted name."""


_Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def test_boxed_task_is_the_boxed_template(tmp_path: Path) -> None:
    task = yaml.load(gsm8k_boxed_task(tmp_path, 384), Loader=_Loader)
    question = "What is {x} + 1?"
    user = jinja2.Template(task["doc_to_text"]).render(question=question)
    # The template's user turn; its system turn is lm-eval's --system_instruction.
    assert [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": user}] == GSM8K_COT_BOXED.render(question=question)
    target = jinja2.Template(task["doc_to_target"]).render(answer="Work.\n#### 1,200")
    assert target == "1,200"
    assert task["generation_kwargs"] == {"until": ["<|im_end|>"], "do_sample": False,
                                         "temperature": 0.0, "max_gen_toks": 384}
    (metric,) = task["metric_list"]
    assert tuple(metric["regexes_to_ignore"]) == GSM8K_METRIC["regexes_to_ignore"]
    assert metric["ignore_case"] is GSM8K_METRIC["ignore_case"]
    strict, flexible = task["filter_list"]
    assert re.compile(strict["filter"][0]["regex_pattern"]) == GSM8K_BOXED_STRICT
    assert strict["filter"][0]["group_select"] == -1
    assert flexible["filter"][0]["filter_fn"] == "gsm8k_boxed_filters.flexible_extract"
    assert task["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "gsm8k" / "test.jsonl")


def test_agreement_pairs_lm_eval_docs_with_distill_items(tmp_path: Path) -> None:
    import json

    from eval.crosscheck import agreement, agreement_table

    samples = [  # lm-eval --log_samples: one line per doc and filter
        {"doc_id": 0, "filter": f, "resps": [["so \\boxed{18}"]], "target": "18",
         "filtered_resps": ["18"], "exact_match": 1.0} for f in ("strict-match", "flexible-extract")
    ] + [
        {"doc_id": 1, "filter": "strict-match", "resps": [["it is 7"]], "target": "7",
         "filtered_resps": ["[invalid]"], "exact_match": 0.0},
        {"doc_id": 1, "filter": "flexible-extract", "resps": [["it is 7"]], "target": "7",
         "filtered_resps": ["7"], "exact_match": 1.0},
    ]
    items = [
        {"metric": "gsm8k", "subject": "model", "id": "gsm8k/test/000000",
         "output": "so \\boxed{18}", "answer_strict": "18", "strict_match": 1.0,
         "answer_flexible": "18", "flexible_extract": 1.0},
        {"metric": "gsm8k", "subject": "model", "id": "gsm8k/test/000001",
         "output": "it is 7.", "answer_strict": "[invalid]", "strict_match": 0.0,
         "answer_flexible": "7.", "flexible_extract": 1.0},
        {"metric": "gsm8k", "subject": "base", "id": "gsm8k/test/000001", "output": "x",
         "answer_strict": "x", "strict_match": 0.0, "answer_flexible": "x",
         "flexible_extract": 0.0},
    ]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (tmp_path / "i.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    got = agreement(tmp_path / "s.jsonl", tmp_path / "i.jsonl")
    # Doc 1: another output, the same strict answer, another flexible answer ("7." vs "7").
    assert (got["n"], got["same_output"], got["agree"]) == (2, 1, {"strict": 2, "flexible": 1})
    table = agreement_table(got)
    assert "| 1 | 7 | `[invalid]` / `7` | `[invalid]` / `7.` | no |" in table
    assert table.endswith("strict 2/2, flexible 1/2")
