"""WikiText-2 (teacher.core.tasks.wikitext): documents, detokenizer, word/byte units.

Uses the real benchmark files under ../shared/data (or $DISTILL_DATA_DIR); no network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from teacher.core import tasks as T
from teacher.core.tasks import get_task


def test_wikitext_load(data_dir: Path) -> None:
    task = get_task("wikitext-2")
    assert task.output_type == "loglikelihood_rolling"
    test = task.load("test", data_dir=data_dir)
    valid = task.load("validation", data_dir=data_dir)
    # The document counts of EleutherAI/wikitext_document_level.
    assert (len(test), len(valid)) == (62, 60)
    doc = test[0]
    assert doc.id == "wikitext-2/test/000000" and doc.question == "" and doc.target == ""
    assert doc.raw.startswith(" = Robert <unk> = \n")
    assert doc.answer.startswith(" = Robert <unk> =\n")
    assert " @-@ " in doc.raw and " @-@ " not in doc.answer
    # Documents cover the whole file in order, less a whitespace-only head.
    text = (data_dir / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    joined = "\n".join(d.raw for d in test)
    assert text.endswith(joined) and not text[: len(text) - len(joined)].strip()
    words, nbytes = T.wikitext_units(doc.raw)
    assert nbytes == len(doc.raw.encode()) and words > 100
    assert task.prompt(doc) == ""
    with pytest.raises(NotImplementedError):
        task.extract_answer("x")


def test_wikitext_documents_split() -> None:
    text = " = A = \n a\n = = Sub = = \n b\n = B = \n c\n"
    assert T.wikitext_documents(text) == [" = A = \n a\n = = Sub = = \n b", " = B = \n c\n"]


def test_wikitext_detokenizer() -> None:
    page = ' = = Title = = \n The cat \'s 1 @,@ 000 toys ( 3 ) cost $ 5 @.@ 5 , " he " said . \n'
    assert T.wikitext_detokenizer(page) == (
        ' == Title ==\nThe cat\'s 1,000 toys (3) cost $ 5.5, "he" said.\n'
    )


def test_wikitext_has_no_templates() -> None:
    task = get_task("wikitext-2")
    doc = T.Example(id="w/0", task=task.name, split="test", question="", answer="a", target="")
    assert task.templates() == [] and task.prompt(doc, fewshot=False) == ""
    for kwargs in ({"fewshot": True}, {"template": "gsm8k-cot-8shot"}):
        with pytest.raises(ValueError, match="wikitext-2 has no prompt templates"):
            task.prompt(doc, **kwargs)
