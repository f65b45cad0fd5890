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
