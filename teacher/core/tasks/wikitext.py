"""WikiText-2 perplexity, lm-eval ``wikitext`` (``EleutherAI/wikitext_document_level``).

Owns the ports of lm-eval's WikiText preprocessing (the detokenizer, the split into
articles, the word/byte counts of word_perplexity and bits_per_byte) and
:class:`WikitextTask` (registered as ``"wikitext-2"``). Local data:
``wikitext-2/{train,valid,test}.txt``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

from teacher.core.tasks.base import Example, Task
from teacher.core.tasks.data import load_hub, read_text_document
from teacher.core.tasks.registry import register_task

WIKITEXT_HUB_ID = "EleutherAI/wikitext_document_level"  # lm_eval/tasks/wikitext/wikitext.yaml
WIKITEXT_HUB_CONFIG = "wikitext-2-raw-v1"


def wikitext_detokenizer(page: str) -> str:
    """lm_eval/tasks/wikitext/preprocess_wikitext.py ``wikitext_detokenizer`` (takes
    the page string instead of the doc dict)."""
    string = page
    # contractions
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    # number separators
    string = string.replace(" @-@ ", "-")
    string = string.replace(" @,@ ", ",")
    string = string.replace(" @.@ ", ".")
    # punctuation
    string = string.replace(" : ", ": ")
    string = string.replace(" ; ", "; ")
    string = string.replace(" . ", ". ")
    string = string.replace(" ! ", "! ")
    string = string.replace(" ? ", "? ")
    string = string.replace(" , ", ", ")
    # double brackets
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    # miscellaneous
    string = string.replace("= = = =", "====")
    string = string.replace("= = =", "===")
    string = string.replace("= =", "==")
    string = string.replace(" " + chr(176) + " ", chr(176))
    string = string.replace(" \n", "\n")
    string = string.replace("\n ", "\n")
    string = string.replace(" N ", " 1 ")
    string = string.replace(" 's", "'s")
    return string


def wikitext_documents(text: str) -> list[str]:
    """Split a WikiText file into articles, as the ``EleutherAI/wikitext_document_level``
    builder (``_generate_examples``) that lm-eval's ``wikitext`` task reads does: a new
    page starts at each top-level heading line `` = Title = ``; a page that is only
    whitespace is dropped, except the last one, which is always kept."""
    pages: list[str] = []
    lines: list[str] = []
    for line in text.split("\n"):
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" ="):
            page = "\n".join(lines)
            if page.strip():
                pages.append(page)
            lines = []
        lines.append(line)
    pages.append("\n".join(lines))
    return pages


def wikitext_units(page: str) -> tuple[int, int]:
    """(words, bytes) of the *original* page, the denominators of lm-eval's
    word_perplexity and byte_perplexity / bits_per_byte
    (lm_eval/tasks/wikitext/preprocess_wikitext.py ``process_results``)."""
    return len(re.split(r"\s+", page)), len(page.encode("utf-8"))


@register_task("wikitext-2")
class WikitextTask(Task):
    """WikiText-2 perplexity, lm-eval ``wikitext``: one Example per article.

    ``answer`` is the detokenized article (what lm-eval scores with rolling
    loglikelihood), ``raw`` the original page (what it counts words/bytes on); the
    prompt is "" and there are no templates (see :meth:`Task.prompt`).
    Local files: ``wikitext-2/{train,valid,test}.txt``; split "validation" reads
    ``valid.txt``.
    """

    family = "wikitext"
    output_type = "loglikelihood_rolling"
    splits = ("train", "validation", "test")
    _FILES: ClassVar[dict[str, str]] = {
        "train": "train.txt",
        "validation": "valid.txt",
        "test": "test.txt",
    }

    def __init__(self, name: str = "wikitext-2") -> None:
        super().__init__(name)

    def _load_local(self, split: str, root: Path) -> list[str]:
        path = self._split_file(self._task_dir(root, "wikitext-2") / self._FILES[split], split)
        # Read as one document (the whole file), split into articles below.
        return wikitext_documents(read_text_document(str(path)))

    def _load_hub(self, split: str) -> list[str]:
        rows = load_hub(self.name, split, WIKITEXT_HUB_ID, WIKITEXT_HUB_CONFIG)
        return [row["page"] for row in rows]

    def _example(self, split: str, index: int, row: str) -> Example:
        return self._new_example(
            split, index, question="", answer=wikitext_detokenizer(row), target="", raw=row
        )
