"""The prompt templates (teacher.core.templates): registry, versions, rendering."""

from __future__ import annotations

import re

import pytest

from teacher.core.tasks.gsm8k import GSM8K_COT_8SHOT, GSM8K_COT_ZEROSHOT
from teacher.core.templates import get_template, list_templates, register_template


def test_templates_registry() -> None:
    keys = [t.key for t in list_templates()]
    assert len(keys) == len(set(keys))
    assert {"gsm8k-cot-zeroshot", "gsm8k-cot-8shot"} <= {t.id for t in list_templates("gsm8k")}
    assert get_template("gsm8k-cot-8shot") is GSM8K_COT_8SHOT
    assert get_template("gsm8k-cot-8shot@v1") is GSM8K_COT_8SHOT
    assert get_template("gsm8k-cot-zeroshot", version=1) is GSM8K_COT_ZEROSHOT
    assert GSM8K_COT_ZEROSHOT.key == "gsm8k-cot-zeroshot@v1"
    assert re.fullmatch(r"[0-9a-f]{16}", GSM8K_COT_8SHOT.digest)
    assert GSM8K_COT_8SHOT.stop == ("Q:", "</s>", "<|im_end|>")
    with pytest.raises(ValueError, match="no version 9"):
        get_template("gsm8k-cot-8shot", version=9)
    with pytest.raises(ValueError, match="unknown template"):
        get_template("nope")
    with pytest.raises(KeyError, match="missing"):
        GSM8K_COT_8SHOT.render()


def test_template_render_keeps_braces() -> None:
    assert GSM8K_COT_8SHOT.render(question="What is {x}?").endswith("Q: What is {x}?\nA:")


# Records name their templates by key and digest; a digest that changes means a
# template was edited in place (make a new version instead).
SHIPPED_DIGESTS = {
    "gsm8k-cot-zeroshot@v1": "f87f67cdae477533",
    "gsm8k-cot-8shot@v1": "7cfd0bbfc6eedf30",
    "gsm8k-cot-boxed@v1": "b5ff3b151ef08a59",
    "bbh-cot-3shot@v1": "a940cf3fcca455e5",
    "bbh-cot-zeroshot@v1": "2187a15167428923",
    "gsm8k-sdft-rewrite@v1": "81d4a6322b49a921",
    "gsm8k-sdft-rewrite@v2": "03950c847692d99d",
    "bbh-sdft-rewrite@v1": "42af956aeaaf4621",
    "bbh-zeroshot@v1": "f0c7e5d9fa0a18c1",
}


def test_shipped_templates_keep_their_digests() -> None:
    assert {key: get_template(key).digest for key in SHIPPED_DIGESTS} == SHIPPED_DIGESTS


def test_task_modules_register_their_templates() -> None:
    # A task's prompt formats live in its module and register themselves: no list to edit.
    from teacher.core.tasks import get_task, list_tasks

    for name in list_tasks():
        for tpl in get_task(name).templates():
            assert get_template(tpl.key) is tpl
            assert tpl.task == get_task(name).family


def test_a_template_key_registers_once() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_template(GSM8K_COT_8SHOT)
