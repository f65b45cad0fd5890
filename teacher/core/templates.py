"""Versioned prompt templates shared by data generation, student training and eval.

Every prompt the project sends to a model comes from a :class:`Template` here. The
data-generation job records ``template.key`` (``"<id>@v<version>"``) and
``template.digest`` next to each teacher response, so a template's text is never
edited in place: a change is a new ``Template`` with the same ``id`` and
``version + 1`` (the old one stays registered, so old records stay reproducible).

Templates modelled on lm-evaluation-harness 0.4.13 name the file they copy in
``source``; their rendered text is byte-identical to what lm-eval builds for the
same document without a chat template (checked against lm-eval's YAML when written).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BBH_COT_3SHOT",
    "BBH_COT_ZEROSHOT",
    "BBH_REWRITE",
    "GSM8K_COT_8SHOT",
    "GSM8K_COT_EXEMPLARS",
    "GSM8K_COT_ZEROSHOT",
    "GSM8K_REWRITE",
    "Template",
    "get_template",
    "list_templates",
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


# lm-eval 0.4.13 lm_eval/tasks/gsm8k/gsm8k-cot.yaml, fewshot_config.samples: the
# 8 chain-of-thought exemplars of Wei et al. (2022), as (question, target).
GSM8K_COT_EXEMPLARS: tuple[tuple[str, str], ...] = (
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
        "After they are done, there will be 21 trees. How many trees did the grove workers "
        "plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. "
        "So there must have been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in "
        "the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they "
        "have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = "
        "74. After eating 35, they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How "
        "many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave "
        "Denny 20 - 12 = 8. The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How "
        "many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 "
        "more toys. 5 + 4 = 9. The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each "
        "day, from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So "
        "5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 "
        "more. How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
        "After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she "
        "has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.",
    ),
)


def _escape(text: str) -> str:
    """Make literal text safe inside a str.format template."""
    return text.replace("{", "{{").replace("}", "}}")


# Zero-shot chat prompt for instruct teachers. It asks for GSM8K's own "#### N"
# final line, so lm-eval's gsm8k "strict-match" regex reads the answer and the
# response has the same shape as the human references students train on.
GSM8K_COT_ZEROSHOT = Template(
    id="gsm8k-cot-zeroshot",
    version=1,
    task="gsm8k",
    kind="chat",
    text=(
        "{question}\n\n"
        "Solve the problem step by step. Then write the final answer on its own last line "
        'in the form "#### <number>", using only digits (no units, no commas).'
    ),
    fields=("question",),
    max_new_tokens=512,
    source="distill",
)

# lm-eval's gsm8k_cot (lm_eval/tasks/gsm8k/gsm8k-cot.yaml): doc_to_text
# "Q: {{question}}\nA:", target_delimiter " ", fewshot_delimiter "\n\n", the 8
# fixed exemplars (sampler first_n), no description; until ["Q:", "</s>",
# "<|im_end|>"]; max_gen_toks defaults to 256 (lm_eval/models/huggingface.py).
GSM8K_COT_8SHOT = Template(
    id="gsm8k-cot-8shot",
    version=1,
    task="gsm8k",
    kind="completion",
    text="".join(f"Q: {_escape(q)}\nA: {_escape(a)}\n\n" for q, a in GSM8K_COT_EXEMPLARS)
    + "Q: {question}\nA:",
    fields=("question",),
    stop=("Q:", "</s>", "<|im_end|>"),
    max_new_tokens=256,
    num_fewshot=8,
    source="lm_eval/tasks/gsm8k/gsm8k-cot.yaml",
)

# lm-eval's bbh_cot_fewshot_<subtask> (lm_eval/tasks/bbh/cot_fewshot/): the
# description plus 3 exemplars, each "Q: {input}\nA: Let's think step by step.\n"
# + rationale, joined by "\n\n". `prefix` is the subtask's cot-prompts/<subtask>.txt
# from BIG-Bench-Hard (after its canary and "-----" lines), which is that same
# text; until ["</s>", "Q", "\n\n"], max_gen_toks 1024
# (lm_eval/tasks/bbh/cot_fewshot/_cot_fewshot_template_yaml).
BBH_COT_3SHOT = Template(
    id="bbh-cot-3shot",
    version=1,
    task="bbh",
    kind="completion",
    text="{prefix}\n\nQ: {input}\nA: Let's think step by step.\n",
    fields=("prefix", "input"),
    stop=("</s>", "Q", "\n\n"),
    max_new_tokens=1024,
    num_fewshot=3,
    source="lm_eval/tasks/bbh/cot_fewshot/_cot_fewshot_template_yaml",
)

# Zero-shot chat prompt for instruct teachers. It asks for the exemplars'
# closing sentence, "So the answer is X.", which lm-eval's bbh cot_fewshot
# "get-answer" regex reads.
BBH_COT_ZEROSHOT = Template(
    id="bbh-cot-zeroshot",
    version=1,
    task="bbh",
    kind="chat",
    text=(
        "{input}\n\n"
        "Think step by step. End your response with a final sentence of the form "
        '"So the answer is <answer>." where <answer> is written exactly as the question '
        "asks for it (for a multiple-choice question, the option label, e.g. (A))."
    ),
    fields=("input",),
    max_new_tokens=1024,
    source="distill",
)

# ---------------------------------------------------------------- distillation
# Prompts the teacher generates training data with (teacher.distill.modes). The student
# never sees them: it trains on the task's zero-shot prompt -> the chosen response.
# Reasoning traces use the few-shot CoT templates above (gsm8k-cot-8shot).


# SDFT (Yang et al. 2024, "Self-Distillation Bridges Distribution Gap in Language
# Model Fine-Tuning"), its rewrite prompt, plus the task's answer format so the
# rewrite's final answer can be checked against the reference.
_SDFT_HEAD = (
    "Below are an instruction that describes a task along with a reference answer. "
    "Using the reference answer as a guide, write your own response."
)
GSM8K_REWRITE_V1 = Template(
    id="gsm8k-sdft-rewrite",
    version=1,
    task="gsm8k",
    kind="chat",
    text=(
        _SDFT_HEAD + " Reason step by step and end with the final answer on its own last "
        'line in the form "#### <number>".\n'
        "### Instruction:\n{question}\n### Reference Answer:\n{reference}\n### Response:\n"
    ),
    fields=("question", "reference"),
    max_new_tokens=384,
    source="distill (SDFT, Yang et al. 2024)",
)
# Version 2: small instruct models (Qwen2.5-Coder-0.5B) answer v1 with a bare
# "#### N", which has no reasoning and is rejected; given the reference as a
# private system note (ending in prose, not "#### N") and the question as the
# task's own zero-shot prompt, they write a step-by-step solution in their own
# style (and the answer check still rejects the ones that stray from the
# reference's result).
GSM8K_REWRITE = Template(
    id="gsm8k-sdft-rewrite",
    version=2,
    task="gsm8k",
    kind="chat",
    system=(
        "Reference solution (for you only; the user does not see it):\n{reference}\n\n"
        "Using the reference solution as a guide, write your own response to the user."
    ),
    text=GSM8K_COT_ZEROSHOT.text,
    fields=("question", "reference"),
    max_new_tokens=384,
    # Shown "#### N", the model copies that line first and reasons after it.
    reference_answer_line="The final answer is {answer}.",
    source="distill (SDFT, Yang et al. 2024; reference as a system note)",
)
BBH_REWRITE = Template(
    id="bbh-sdft-rewrite",
    version=1,
    task="bbh",
    kind="chat",
    text=(
        _SDFT_HEAD + " Think step by step and end with a final sentence of the form "
        '"So the answer is <answer>."\n'
        "### Instruction:\n{question}\n### Reference Answer:\n{reference}\n### Response:\n"
    ),
    fields=("question", "reference"),
    max_new_tokens=512,
    source="distill (SDFT, Yang et al. 2024)",
)

_TEMPLATES: tuple[Template, ...] = (
    GSM8K_COT_ZEROSHOT,
    GSM8K_COT_8SHOT,
    BBH_COT_3SHOT,
    BBH_COT_ZEROSHOT,
    GSM8K_REWRITE_V1,
    GSM8K_REWRITE,
    BBH_REWRITE,
)


def list_templates(task: str | None = None) -> list[Template]:
    """All registered templates (every version), optionally for one task family."""
    return [t for t in _TEMPLATES if task is None or t.task == task]


def get_template(template_id: str, version: int | None = None) -> Template:
    """A template by id; the newest version unless ``version`` is given.

    Also accepts a ``key`` (``"gsm8k-cot-8shot@v1"``) as recorded in data files.
    """
    if version is None and "@v" in template_id:
        template_id, _, v = template_id.rpartition("@v")
        if not v.isdigit():
            raise ValueError(f"bad template key {template_id}@v{v!r}")
        version = int(v)
    matches = [t for t in _TEMPLATES if t.id == template_id]
    if not matches:
        known = sorted({t.id for t in _TEMPLATES})
        raise ValueError(f"unknown template {template_id!r}; known: {', '.join(known)}")
    if version is None:
        return max(matches, key=lambda t: t.version)
    for t in matches:
        if t.version == version:
            return t
    versions = sorted(t.version for t in matches)
    raise ValueError(f"template {template_id!r} has no version {version}; has {versions}")
