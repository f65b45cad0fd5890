"""What every task is: :class:`Example` (one benchmark item) and the :class:`Task` ABC.

A task loads its examples (local data directory or hub, see :mod:`.data`), renders
prompts from :mod:`teacher.core.templates`, extracts answers with the lm-eval filter
ports (:mod:`.filters`) and scores them. A concrete task implements the three
loading hooks (``_load_local``, ``_load_hub``, ``_example``) and, for a
``generate_until`` task, ``extract_answer`` / ``extract_answer_flexible`` and the
``strict_metric`` / ``flexible_metric`` settings that :meth:`Task.is_correct` uses.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from teacher.core.tasks.data import PathLike, resolve_data_dir
from teacher.core.tasks.filters import INVALID, canonical_answer
from teacher.core.templates import Template, get_template

Messages = list[dict[str, str]]
T = TypeVar("T")


@dataclass(frozen=True)
class Example:
    """One benchmark item, the same for data generation, training and eval.

    ``id`` is stable across runs and unique across tasks: ``<task>/<split>/<index:06d>``,
    the index being the record's position in its (fixed) source file.
    """

    id: str
    task: str
    split: str
    question: str  # what the model is asked (empty for wikitext)
    answer: str  # the full reference, e.g. GSM8K's rationale + "#### 42"
    target: str  # the final answer alone, e.g. "42" (empty for wikitext)
    # The source text before preprocessing, where it differs from `answer`: for
    # wikitext the tokenized page, on which lm-eval counts words and bytes for
    # word/byte perplexity (see wikitext_units). Empty otherwise.
    raw: str = ""


def draw_rank(item_id: str, seed: int) -> str:
    """The seeded sort key of :func:`draw` (salted apart from the validation split's)."""
    return hashlib.sha256(f"draw:{seed}:{item_id}".encode()).hexdigest()


def draw(items: Sequence[T], n: int | None, seed: int,
         id_of: Callable[[T], str] | None = None) -> list[T]:
    """A seeded draw of ``n`` of ``items`` (all if ``n`` is None), kept in their order.

    The ``n`` items whose id has the smallest seeded hash: the draw depends on the ids
    only, so it is the same whoever draws (data job, student, experiment), nested in
    ``n`` (the first 20 drawn are among the first 40) and, from any superset that
    holds them, the same items.
    """
    if n is None or n >= len(items):
        return list(items)
    key = id_of or (lambda item: item.id)  # Example, TrainExample, Record
    keep = set(sorted(range(len(items)), key=lambda i: draw_rank(key(items[i]), seed))[:n])
    return [item for i, item in enumerate(items) if i in keep]


def target_of(target: str | Example) -> tuple[str, Example | None]:
    """``is_correct``'s target argument as (target text, the Example if one was given)."""
    return (target.target, target) if isinstance(target, Example) else (target, None)


def none_if_invalid(filtered: str) -> str | None:
    """A filter's output as an answer: None for lm-eval's fallbacks (INVALID, "")."""
    return None if filtered in (INVALID, "") else filtered


class Task(ABC):
    """One benchmark: loading, prompting, answer extraction and scoring.

    ``output_type`` follows lm-eval: ``"generate_until"`` tasks are scored on
    generated text; ``"loglikelihood_rolling"`` (wikitext) on perplexity, and have
    no answers to extract.
    """

    name: str
    family: ClassVar[str]  # the template family, Template.task
    splits: tuple[str, ...]
    output_type: ClassVar[Literal["generate_until", "loglikelihood_rolling"]]
    default_template: Template | None = None
    zeroshot_template: Template | None = None
    fewshot_template: Template | None = None
    # lm-eval's exact_match settings (keyword arguments of filters.exact_match) under
    # which is_correct compares the strict / flexible answer; None: no answers.
    strict_metric: ClassVar[Mapping[str, Any] | None] = None
    flexible_metric: ClassVar[Mapping[str, Any] | None] = None

    def __init__(self, name: str) -> None:
        self.name = name  # the registry name, also the prefix of every Example id

    # ---- loading

    def load(
        self, split: str, data_dir: PathLike | None = None, limit: int | None = None,
        sample_seed: int | None = None,
    ) -> list[Example]:
        """The examples of ``split`` in file order: the first ``limit`` if given, or with
        ``sample_seed`` the ``limit`` drawn with that seed (:func:`draw`; file order kept).

        Reads ``data_dir`` if given, else :func:`default_data_dir`, else the hub.
        """
        if split not in self.splits:
            raise ValueError(
                f"unknown split {split!r} for task {self.name!r}; splits: {list(self.splits)}"
            )
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
        root = resolve_data_dir(data_dir)
        rows = self._load_local(split, root) if root is not None else self._load_hub(split)
        if sample_seed is not None:
            return draw([self._example(split, i, row) for i, row in enumerate(rows)],
                        limit, sample_seed)
        if limit is not None:
            rows = rows[:limit]
        return [self._example(split, i, row) for i, row in enumerate(rows)]

    def _task_dir(self, root: Path, sub: str) -> Path:
        path = root / sub
        if not path.is_dir():
            raise FileNotFoundError(
                f"task directory not found: {path} ({self.name} data is expected under "
                f"the data directory {root})"
            )
        return path

    def _split_file(self, path: Path, split: str) -> Path:
        if not path.is_file():
            raise FileNotFoundError(f"no data for {self.name} split {split!r}: {path} not found")
        return path

    def _new_example(
        self, split: str, index: int, *, question: str, answer: str, target: str, raw: str = ""
    ) -> Example:
        """An Example of this task with its stable id ``<task>/<split>/<index:06d>``."""
        return Example(
            id=f"{self.name}/{split}/{index:06d}",
            task=self.name,
            split=split,
            question=question,
            answer=answer,
            target=target,
            raw=raw,
        )

    @abstractmethod
    def _load_local(self, split: str, root: Path) -> list[Any]:
        """The rows of ``split`` from the local data directory ``root``."""

    @abstractmethod
    def _load_hub(self, split: str) -> list[Any]:
        """The rows of ``split`` from the Hugging Face hub."""

    @abstractmethod
    def _example(self, split: str, index: int, row: Any) -> Example:
        """Row ``index`` of ``split`` as an Example (use :meth:`_new_example`)."""

    # ---- prompting

    def templates(self) -> list[Template]:
        """The templates this task can render."""
        return [t for t in (self.zeroshot_template, self.fewshot_template) if t is not None]

    def _pick_template(self, template: str | Template | None, fewshot: bool | None) -> Template:
        if template is not None and fewshot is not None:
            raise ValueError("pass either template= or fewshot=, not both")
        if fewshot is not None:
            tpl = self.fewshot_template if fewshot else self.zeroshot_template
        elif isinstance(template, str):
            tpl = get_template(template)
        else:
            tpl = template or self.default_template
        if tpl is None:
            raise ValueError(f"task {self.name!r} has no such prompt template")
        if tpl.task != self.family:
            raise ValueError(f"template {tpl.key} is for {tpl.task!r}, not {self.name!r}")
        return tpl

    def prompt(
        self,
        example: Example,
        template: str | Template | None = None,
        *,
        fewshot: bool | None = None,
        data_dir: PathLike | None = None,
    ) -> str | Messages:
        """The model input for ``example``: chat messages for a chat template, a plain
        string for a completion template (see :mod:`teacher.core.templates`).

        ``template`` is a Template, an id or a key (``"gsm8k-cot-8shot@v1"``);
        ``fewshot=True/False`` picks the task's few-shot / zero-shot template instead;
        neither gives ``default_template``. ``data_dir`` is where prompt files live
        (BBH's CoT exemplars), resolved like :meth:`load`.

        A ``loglikelihood_rolling`` task has no templates and its prompt is "" (lm-eval's
        doc_to_text): the whole document is the scored continuation.
        """
        if self.output_type == "loglikelihood_rolling":
            if template is not None or fewshot:
                raise ValueError(f"{self.name} has no prompt templates")
            return ""
        tpl = self._pick_template(template, fewshot)
        return tpl.render(**self._template_fields(example, tpl, data_dir))

    def _template_fields(
        self, example: Example, template: Template, data_dir: PathLike | None
    ) -> dict[str, str]:
        return {"question": example.question}

    # ---- answers

    def _no_answers(self) -> NotImplementedError:
        return NotImplementedError(f"{self.name} is a {self.output_type} task: no answers")

    def extract_answer(self, text: str) -> str | None:
        """lm-eval's strict filter: the answer in the format the prompt asked for."""
        raise self._no_answers()

    def extract_answer_flexible(self, text: str, example: Example | None = None) -> str | None:
        """lm-eval's "flexible-extract" filter: a looser search for the answer."""
        raise self._no_answers()

    def is_correct(self, text: str, target: str | Example, *, flexible: bool = False) -> bool:
        """Whether a model response answers correctly: the extracted answer against
        the target under lm-eval's exact_match settings (``strict_metric`` /
        ``flexible_metric``), then numbers compared by value ("5.0" matches "5").

        ``target`` is a target string or the Example (whose ``target`` is used, and
        whose question the flexible multiple-choice / word-sorting filters need).
        """
        metric = self.flexible_metric if flexible else self.strict_metric
        if metric is None:
            raise self._no_answers()
        target_text, example = target_of(target)
        if flexible:
            found = self.extract_answer_flexible(text, example)
        else:
            found = self.extract_answer(text)
        if found is None:
            return False
        return canonical_answer(found, metric) == canonical_answer(target_text, metric)

    def reference_response(self, example: Example) -> str:
        """The ground-truth response a student is trained on."""
        return example.answer

    def training_response(self, text: str) -> str:
        """A generated response in the form the student is trained on (its final answer
        stated the way the task's zero-shot prompt asks); unchanged by default."""
        return text

    def rationale(self, response: str) -> str | None:
        """A training response without its final-answer line; None when it has no
        such line (then there is nothing to restate in other words)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
