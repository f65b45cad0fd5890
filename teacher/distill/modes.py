"""Distillation modes: turn one task example into a :class:`~teacher.core.records.Record`.

Server-side logic on top of :class:`~teacher.serving.service.TeacherService` (the ``Distill``
RPC calls :func:`distill_example`):

- ``trace`` ("Distilling step-by-step", Hsieh et al. 2023): sample k rationales with
  a versioned few-shot CoT template, extract each answer, keep the correct ones.
- ``rewrite`` (SDFT, Yang et al. 2024): the model rewrites the reference answer in
  its own words; rewrites that leak the template or change the final answer are
  rejected and the record falls back to the reference.
- ``best_of_n`` (self-output, Wu et al. 2025; GRAPE, Zhang et al. 2025): sample N
  answers (by default with the 8-shot CoT prompt, see ``DEFAULT_TEMPLATES``),
  score each under the scorer model (the student's base) and keep the correct one
  with the lowest perplexity.

Candidates that are only a final-answer line ("#### 72") are rejected as "no
reasoning" in every mode: they teach the student to skip its reasoning.

Every candidate is scored under the scorer with the student's training prompt as
context (the task's zero-shot prompt), as is the reference, so records say how
surprising the chosen response is to the student compared with the ground truth.
Among the candidates that pass, every mode picks the lowest perplexity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from teacher.core.records import Candidate, Record
from teacher.core.tasks import Example, Task, get_task
from teacher.core.templates import (
    BBH_COT_ZEROSHOT,
    BBH_REWRITE,
    GSM8K_COT_8SHOT,
    GSM8K_REWRITE,
    Template,
    get_template,
)
from teacher.serving.errors import InvalidArgument
from teacher.serving.service import GenerationParams, ModelHost, ScoreItem, TeacherService

MODES = ("trace", "rewrite", "best_of_n")
FALLBACKS = ("reference", "reject")
DEFAULT_PPL_THRESHOLD = 2.5
DEFAULT_NUM_CANDIDATES = {"trace": 4, "rewrite": 1, "best_of_n": 4}
# Sampling temperature a job uses when none is given: greedy for one rewrite,
# sampling where several candidates must differ.
DEFAULT_TEMPERATURE = {"trace": 0.7, "rewrite": 0.0, "best_of_n": 0.7}

# Generation templates per (mode, task family). Traces and best-of-N samples use
# lm-eval's few-shot CoT prompt: small instruct models answer the zero-shot chat
# prompt with a bare "#### N" (Qwen2.5-Coder-0.5B does), which teaches no
# reasoning; pass the task's zero-shot template (e.g. "gsm8k-cot-zeroshot") for
# pure self-outputs.
DEFAULT_TEMPLATES: dict[tuple[str, str], Template] = {
    ("trace", "gsm8k"): GSM8K_COT_8SHOT,
    ("trace", "bbh"): BBH_COT_ZEROSHOT,
    ("best_of_n", "gsm8k"): GSM8K_COT_8SHOT,
    ("best_of_n", "bbh"): BBH_COT_ZEROSHOT,
    ("rewrite", "gsm8k"): GSM8K_REWRITE,
    ("rewrite", "bbh"): BBH_REWRITE,
}
# A response is training data for reasoning only if it reasons before it states
# the final answer ("#### N", "The answer is N.").
MIN_REASONING_WORDS = 5
_ANSWER_MARK = re.compile(r"####|the answer is", re.IGNORECASE)

# A rewrite that talks about its instructions instead of answering is useless as
# training data (SDFT filters these); matched case-insensitively.
LEAK_PATTERNS = (
    r"reference answer",
    r"\byour (own )?response\b",
    r"\bmy (own )?response\b",
    r"###\s*(instruction|response|reference)",
    r"\bthe reference\b",
    r"<number>",  # the answer-format instruction copied back
)
_LEAK = re.compile("|".join(f"(?:{p})" for p in LEAK_PATTERNS), re.IGNORECASE)


def normalize_mode(mode: str) -> str:
    """``"best-of-n"`` -> ``"best_of_n"``; raises ValueError for unknown modes."""
    name = mode.strip().lower().replace("-", "_")
    if name not in MODES:
        raise ValueError(f"unknown mode {mode!r}; one of trace, rewrite, best-of-n")
    return name


def reasoning_words(text: str) -> int:
    """Words of ``text`` before its first final-answer marker."""
    match = _ANSWER_MARK.search(text)
    return len((text[: match.start()] if match else text).split())


def template_leak(text: str) -> str | None:
    """The leaked template phrase in ``text``, or None."""
    match = _LEAK.search(text)
    return match.group(0) if match else None


@dataclass(frozen=True)
class DistillOptions:
    """How to distill one example (the ``Distill`` RPC's request minus the example)."""

    mode: str
    model: str = ""  # generator, a model name on the server ("" = its default)
    scorer_model: str = ""  # "" = the generator
    num_candidates: int = 0  # k (trace) / N (best_of_n) / rewrites; 0 = the mode default
    template: str = ""  # generation template id or key; "" = the mode's default
    sampling: GenerationParams = field(default_factory=GenerationParams)
    ppl_threshold: float = DEFAULT_PPL_THRESHOLD
    require_correct: bool = True  # trace: only correct rationales may be chosen
    fallback: str = "reference"  # when no candidate passes: "reference" or "reject"


def example_record_base(task: Task, example: Example, mode: str) -> dict:
    """The record fields that depend only on the example (the student's side)."""
    try:
        reference = task.reference_response(example)
    except ValueError as exc:
        raise InvalidArgument("example.reference", str(exc)) from exc
    target = example.target or task.extract_answer(reference) or ""
    return {
        "id": example.id,
        "task": example.task,
        "split": example.split,
        "mode": mode,
        "prompt": task.prompt(example, task.zeroshot_template),
        "question": example.question,
        "reference": reference,
        "target": target,
    }


def _generation_template(task: Task, mode: str, template: str) -> Template:
    try:
        tpl = get_template(template) if template else DEFAULT_TEMPLATES[(mode, task.family)]
    except KeyError as exc:
        raise InvalidArgument("mode", f"{mode} has no template for task {task.name!r}") from exc
    except ValueError as exc:
        raise InvalidArgument("template", str(exc)) from exc
    if tpl.task != task.family:
        raise InvalidArgument("template", f"{tpl.key} is for {tpl.task!r}, not {task.name!r}")
    if mode == "rewrite" and set(tpl.fields) != {"question", "reference"}:
        raise InvalidArgument("template", f"{tpl.key} is not a rewrite template")
    return tpl


def _host_provenance(service: TeacherService, host: ModelHost) -> dict:
    p = service.provenance(host)
    return {
        "model": p.model,
        "revision": p.revision,
        "engine": p.engine,
        "engine_version": p.engine_version,
    }


async def distill_example(
    service: TeacherService, example: Example, options: DistillOptions, request_id: str = ""
) -> Record:
    """Generate, check, score and choose: one record for ``example``."""
    try:
        mode = normalize_mode(options.mode)
    except ValueError as exc:
        raise InvalidArgument("mode", str(exc)) from exc
    if options.fallback not in FALLBACKS:
        raise InvalidArgument("fallback", f"{options.fallback!r}; one of {FALLBACKS}")
    try:
        task = get_task(example.task)
    except (KeyError, ValueError) as exc:
        raise InvalidArgument("example.task", str(exc).strip("'\"")) from exc
    if task.output_type != "generate_until":
        raise InvalidArgument("example.task", f"{task.name} has no answers to distill")
    if not example.question.strip():
        raise InvalidArgument("example.question", "empty question")
    if not example.id:
        raise InvalidArgument("example.id", "empty id")
    base = example_record_base(task, example, mode)
    train_prompt = base["prompt"]
    reference = base["reference"]

    tpl = _generation_template(task, mode, options.template)
    if mode == "rewrite":
        shown = reference
        body = task.rationale(reference)
        if tpl.reference_answer_line and body is not None:
            answer = tpl.reference_answer_line.format(answer=base["target"])
            shown = f"{body}\n{answer}".lstrip()
        gen_prompt = tpl.render(question=example.question, reference=shown)
        stop, max_new, prompt_key = tpl.stop, tpl.max_new_tokens, tpl.key
    else:
        gen_prompt = task.prompt(example, tpl)
        stop, max_new, prompt_key = tpl.stop, tpl.max_new_tokens, tpl.key

    n = options.num_candidates or DEFAULT_NUM_CANDIDATES[mode]
    sampling = options.sampling
    if n > 1 and sampling.temperature == 0:
        raise InvalidArgument(
            "sampling.temperature", f"0 (greedy) with {n} candidates gives {n} identical ones"
        )
    params = GenerationParams(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        seed=sampling.seed,
        n=n,
        max_new_tokens=sampling.max_new_tokens or max_new or 0,
        min_new_tokens=sampling.min_new_tokens,
        stop=tuple(dict.fromkeys((*stop, *sampling.stop))),
        time_limit_s=sampling.time_limit_s,
    )
    scorer_name = options.scorer_model or service.host(options.model).name
    try:  # an unknown scorer fails before any generation
        service.host(scorer_name)
    except InvalidArgument as exc:
        raise InvalidArgument("scorer_model", str(exc).removeprefix("model: ")) from exc
    results, params, gen_host = await service.generate_batch(
        options.model, [gen_prompt], params, request_id
    )
    samples = results[0]

    candidates = []
    for sample in samples:
        # In the student's answer format, so what is scored is what it trains on.
        text = task.training_response(sample.text.strip())
        answer = task.extract_answer(text) if text else None
        cand = Candidate(text=text, answer=answer, correct=task.is_correct(text, example))
        if not text:
            cand.rejected_because = "empty"
        elif mode == "rewrite" and (leak := template_leak(text)):
            cand.rejected_because = f"template leak: {leak!r}"
        elif not cand.correct and (mode != "trace" or options.require_correct):
            cand.rejected_because = "no answer" if answer is None else "wrong answer"
        elif reasoning_words(text) < MIN_REASONING_WORDS:
            cand.rejected_because = "no reasoning"
        candidates.append(cand)

    # Score every non-empty candidate and the reference in one call.
    scored = [i for i, c in enumerate(candidates) if c.text]
    items = [ScoreItem(train_prompt, candidates[i].text) for i in scored]
    items.append(ScoreItem(train_prompt, reference))
    scores, scorer_host = await service.score(scorer_name, items, options.ppl_threshold)
    for i, s in zip(scored, scores, strict=False):
        c = candidates[i]
        c.nll, c.num_tokens, c.perplexity = s.nll_sum, s.num_tokens, s.perplexity
        c.frac_above_threshold = s.frac_above_threshold
    ref_score = scores[-1]

    passing = [i for i, c in enumerate(candidates) if not c.rejected_because]
    record = Record(
        **base,
        response="",
        status="rejected",
        reference_nll=ref_score.mean_nll,
        reference_tokens=ref_score.num_tokens,
        reference_perplexity=ref_score.perplexity,
        reference_frac_above_threshold=ref_score.frac_above_threshold,
        candidates=candidates,
    )
    if passing:
        best = min(passing, key=lambda i: candidates[i].perplexity or float("inf"))
        chosen = candidates[best]
        kind = "correct" if options.require_correct or mode != "trace" else "usable"
        record.status, record.response, record.chosen_index = "accepted", chosen.text, best
        record.reason = (
            f"lowest perplexity ({chosen.perplexity:.3f}) of {len(passing)} {kind} "
            f"candidate(s) out of {len(candidates)}"
        )
        mean = chosen.nll / chosen.num_tokens if chosen.num_tokens else 0.0
        record.response_nll, record.response_tokens = mean, chosen.num_tokens
        record.response_perplexity = chosen.perplexity
        record.response_frac_above_threshold = chosen.frac_above_threshold
    else:
        why = _rejections(candidates)
        if options.fallback == "reference":
            record.status, record.response = "fell_back", reference
            record.reason = f"no candidate passed ({why}); fell back to the reference"
            record.response_nll, record.response_tokens = ref_score.mean_nll, ref_score.num_tokens
            record.response_perplexity = ref_score.perplexity
            record.response_frac_above_threshold = ref_score.frac_above_threshold
        else:
            record.reason = f"no candidate passed ({why}); rejected"

    record.provenance = {
        "generator": _host_provenance(service, gen_host),
        "scorer": _host_provenance(service, scorer_host),
        "template": prompt_key,
        "template_digest": tpl.digest,
        "prompt_template": task.zeroshot_template.key,
        "sampling": {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "n": params.n,
            "max_new_tokens": params.max_new_tokens,
            "stop": list(params.stop),
        },
        "seed": params.seed,
        "ppl_threshold": options.ppl_threshold,
        "require_correct": options.require_correct,
        "fallback": options.fallback,
        "usage": {
            "prompt_tokens": sum(s.prompt_tokens for s in samples),
            "completion_tokens": sum(s.completion_tokens for s in samples),
        },
        "request_id": request_id,
    }
    return record


def _rejections(candidates: list[Candidate]) -> str:
    counts: dict[str, int] = {}
    for c in candidates:
        key = c.rejected_because.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in counts.items())
