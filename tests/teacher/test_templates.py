"""The prompt templates (teacher.core.templates): registry, versions, rendering."""

from __future__ import annotations

import re

import pytest

from teacher.core.templates import (
    GSM8K_COT_8SHOT,
    GSM8K_COT_ZEROSHOT,
    get_template,
    list_templates,
)


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
