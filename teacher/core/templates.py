"""Versioned prompt templates shared by data generation, student training and eval.

Every prompt the project sends to a model comes from a registered :class:`Template`.
This module holds the type and the registry; the templates themselves live with the task
they are for (``teacher/core/tasks/<task>.py`` registers its prompt formats, and its
family's distillation prompts, with :func:`register_template`), so a task with a new
prompt format is one module. The data-generation job records ``template.key``
(``"<id>@v<version>"``) and ``template.digest`` next to each teacher response, so a
template's text is never edited in place: a change is a new ``Template`` with the same
``id`` and ``version + 1`` (the old one stays registered, so old records stay
reproducible).

Templates modelled on lm-evaluation-harness 0.4.13 name the file they copy in
``source``; their rendered text is byte-identical to what lm-eval builds for the
same document without a chat template (checked against lm-eval's YAML when written).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "SDFT_HEAD",
    "Messages",
    "Template",
    "escape",
    "get_template",
    "list_templates",
    "register_template",
]

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Template:
    """One prompt format.

    ``text`` is a ``str.format`` string over ``fields``. A ``"chat"`` template renders
    to chat messages (``text`` is the user turn, ``system`` an optional system turn)
    for instruct models; a ``"completion"`` template renders to one plain string for
    base models / raw completion, exactly as lm-eval feeds them.
    """

    id: str
    version: int
    task: str  # task family the template is for: "gsm8k" or "bbh"
    kind: Literal["chat", "completion"]
    text: str
    fields: tuple[str, ...]
    system: str | None = None
    # Generation settings that belong to the format (lm-eval's `until` and
    # `max_gen_toks`): a few-shot prompt needs its stop strings or the model
    # keeps writing the next "Q:".
    stop: tuple[str, ...] = ()
    max_new_tokens: int | None = None
    num_fewshot: int = 0
    source: str = ""  # where the format comes from (an lm-eval file, or "distill")
    # Rewrite templates: how the reference's final "#### N" line is shown to the
    # model ("{answer}" is N); None shows the reference as it is.
    reference_answer_line: str | None = None

    @property
    def key(self) -> str:
        """``"<id>@v<version>"``: what records store to name the template."""
        return f"{self.id}@v{self.version}"

    @property
    def digest(self) -> str:
        """Short hash of everything that shapes the prompt; catches in-place edits."""
        h = hashlib.sha256()
        for part in (self.kind, self.system or "", self.text, "\0".join(self.fields)):
            h.update(part.encode("utf-8"))
            h.update(b"\x1f")
        return h.hexdigest()[:16]

    def render(self, **values: str) -> str | Messages:
        """Fill the template; a chat template returns messages, a completion one a string."""
        missing = [f for f in self.fields if f not in values]
        extra = [k for k in values if k not in self.fields]
        if missing or extra:
            raise KeyError(
                f"template {self.key} takes fields {list(self.fields)}; "
                f"missing {missing}, unexpected {extra}"
            )
        # str.format only interprets braces in `text`, never in the values, so
        # questions containing "{" are safe.
        body = self.text.format(**values)
        if self.kind == "completion":
            return body
        messages: Messages = []
        if self.system:  # formatted too: a system turn may carry fields (e.g. a reference)
            messages.append({"role": "system", "content": self.system.format(**values)})
        messages.append({"role": "user", "content": body})
        return messages


# name -> template, in registration order. Each task module registers the templates
# it renders (and the distillation prompts for its family) when imported; the tasks
# package imports every task module, so every template is found by id.
_TEMPLATES: dict[str, Template] = {}


def register_template(template: Template) -> Template:
    """Register ``template`` under its key (``"<id>@v<version>"``) and return it."""
    if template.key in _TEMPLATES:
        raise ValueError(f"template {template.key} is registered twice")
    _TEMPLATES[template.key] = template
    return template


def _registered() -> list[Template]:
    import teacher.core.tasks  # noqa: F401  the task modules register their templates

    return list(_TEMPLATES.values())


def escape(text: str) -> str:
    """Make literal text safe inside a str.format template."""
    return text.replace("{", "{{").replace("}", "}}")


# SDFT (Yang et al. 2024, "Self-Distillation Bridges Distribution Gap in Language
# Model Fine-Tuning"), its rewrite prompt: the head of every task family's rewrite
# template (teacher.distill.modes.rewrite), each adding its task's answer format so
# the rewrite's final answer can be checked against the reference.
SDFT_HEAD = (
    "Below are an instruction that describes a task along with a reference answer. "
    "Using the reference answer as a guide, write your own response."
)


def list_templates(task: str | None = None) -> list[Template]:
    """All registered templates (every version), optionally for one task family."""
    return [t for t in _registered() if task is None or t.task == task]


def get_template(template_id: str, version: int | None = None) -> Template:
    """A template by id; the newest version unless ``version`` is given.

    Also accepts a ``key`` (``"gsm8k-cot-8shot@v1"``) as recorded in data files.
    """
    if version is None and "@v" in template_id:
        template_id, _, v = template_id.rpartition("@v")
        if not v.isdigit():
            raise ValueError(f"bad template key {template_id}@v{v!r}")
        version = int(v)
    templates = _registered()
    matches = [t for t in templates if t.id == template_id]
    if not matches:
        known = sorted({t.id for t in templates})
        raise ValueError(f"unknown template {template_id!r}; known: {', '.join(known)}")
    if version is None:
        return max(matches, key=lambda t: t.version)
    for t in matches:
        if t.version == version:
            return t
    versions = sorted(t.version for t in matches)
    raise ValueError(f"template {template_id!r} has no version {version}; has {versions}")
