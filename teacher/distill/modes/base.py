"""What every distillation mode shares: its options, the registry of modes by name,
and the pipeline one example goes through (validate, generate, judge, score, choose,
record provenance).

A mode (one module beside this one) is a :class:`DistillMode` subclass registered
with :func:`register`. It names itself, gives its default candidate count,
temperature and generation template per task family, and overrides the hooks that
make it differ: the generation prompt, template checks, its own rejection rule and
whether an incorrect candidate may be chosen.

Candidates that are only a final-answer line ("#### 72") are rejected as "no
reasoning" in every mode: they teach the student to skip its reasoning.

Every candidate is scored under the scorer with the student's training prompt as
context (the task's zero-shot prompt), as is the reference, so records say how
surprising the chosen response is to the student compared with the ground truth.
Among the candidates that pass, every mode picks the lowest perplexity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import ClassVar

from teacher.core.records import Candidate, Record
from teacher.core.tasks import Example, Task, get_task
from teacher.core.tasks.bbh import BBH_COT_ZEROSHOT
from teacher.core.tasks.gsm8k import GSM8K_COT_8SHOT
from teacher.core.templates import Template, get_template
from teacher.serving.errors import InvalidArgument
from teacher.serving.sampling import SamplingParams
from teacher.serving.service import ModelHost, SampleResult, ScoreItem, TeacherService
from teacher.serving.tokenization import PromptInput

FALLBACKS = ("reference", "reject")
DEFAULT_PPL_THRESHOLD = 2.5
# A response is training data for reasoning only if it reasons before it states
# the final answer ("#### N", "The answer is N.").
MIN_REASONING_WORDS = 5
_ANSWER_MARK = re.compile(r"####|the answer is", re.IGNORECASE)
# trace's generation templates, per task family: lm-eval's few-shot CoT prompt, since
# small instruct models answer the zero-shot chat prompt with a bare "#### N"
# (Qwen2.5-Coder-0.5B does), which teaches no reasoning. best_of_n samples the
# student's own answers to its zero-shot training prompt instead (its own templates).
COT_TEMPLATES: dict[str, Template] = {"gsm8k": GSM8K_COT_8SHOT, "bbh": BBH_COT_ZEROSHOT}


def reasoning_words(text: str) -> int:
    """Words of ``text`` before its first final-answer marker."""
    match = _ANSWER_MARK.search(text)
    return len((text[: match.start()] if match else text).split())


@dataclass(frozen=True)
class DistillOptions:
    """How to distill one example (the ``Distill`` RPC's request minus the example)."""

    mode: str
    model: str = ""  # generator, a model name on the server ("" = its default)
    scorer_model: str = ""  # "" = the generator
    num_candidates: int = 0  # k (trace) / N (best_of_n) / rewrites; 0 = the mode default
    template: str = ""  # generation template id or key; "" = the mode's default
    sampling: SamplingParams = field(default_factory=SamplingParams)
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


# ---------------------------------------------------------------- registry

_MODES: dict[str, type[DistillMode]] = {}


def register(cls: type[DistillMode]) -> type[DistillMode]:
    """Class decorator: make ``cls`` the mode called ``cls.name``."""
    if cls.name in _MODES:
        raise ValueError(f"distillation mode {cls.name!r} is registered twice")
    _MODES[cls.name] = cls
    return cls


def wire_value(name: str) -> int:
    """The ``DistillMode`` enum value of mode ``name`` on the wire (``DISTILL_MODE_<NAME>``)."""
    from teacher.api import teacher_pb2 as pb

    key = f"DISTILL_MODE_{name.upper()}"
    try:
        return pb.DistillMode.Value(key)
    except ValueError:
        raise LookupError(
            f"distillation mode {name!r} has no {key} in proto/distill/teacher/v1/teacher.proto; "
            "add it and regenerate the stubs (python -m teacher.api.regenerate)"
        ) from None


def mode_names() -> tuple[str, ...]:
    """Registered mode names, in the order of the wire's ``DistillMode`` enum."""
    return tuple(sorted(_MODES, key=wire_value))


def cli_names() -> list[str]:
    """What ``--mode`` accepts: each name and its dashed spelling (``best-of-n``)."""
    spellings = [(name.replace("_", "-"), name) for name in mode_names()]
    return list(dict.fromkeys(s for pair in spellings for s in pair))


def normalize_mode(mode: str) -> str:
    """``"best-of-n"`` -> ``"best_of_n"``; raises ValueError for unknown modes."""
    name = mode.strip().lower().replace("-", "_")
    if name not in _MODES:
        known = ", ".join(n.replace("_", "-") for n in mode_names())
        raise ValueError(f"unknown mode {mode!r}; one of {known}")
    return name


def get_mode(mode: str) -> DistillMode:
    """The mode called ``mode`` (either spelling); ValueError naming the known ones."""
    return _MODES[normalize_mode(mode)]()


# ---------------------------------------------------------------- the pipeline


class DistillMode:
    """One way to turn a task example into a record; subclasses set the class
    attributes and override the hooks (``generation_prompt``, ``check_template``,
    ``own_rejection``, ``may_choose_incorrect``)."""

    name: ClassVar[str]
    default_num_candidates: ClassVar[int]
    # Sampling temperature a job uses when none is given.
    default_temperature: ClassVar[float]
    templates: ClassVar[dict[str, Template]]  # task family -> default generation template

    # ------------------------------------------------------------ hooks

    def check_template(self, tpl: Template) -> None:
        """Raise InvalidArgument("template", ...) when ``tpl`` cannot serve this mode."""

    def generation_prompt(self, task: Task, example: Example, tpl: Template,
                          base: dict) -> PromptInput:
        """The prompt the generator answers (``base``: the record's example fields)."""
        return task.prompt(example, tpl)

    def own_rejection(self, text: str) -> str:
        """Why this mode rejects a non-empty candidate before the shared checks ("" = no)."""
        return ""

    def may_choose_incorrect(self, options: DistillOptions) -> bool:
        return False

    # ------------------------------------------------------------ pipeline

    async def distill(self, service: TeacherService, example: Example,
                      options: DistillOptions, request_id: str = "") -> Record:
        """Generate, check, score and choose: one record for ``example``."""
        task = self._check_request(example, options)
        base = example_record_base(task, example, self.name)
        tpl = self.template(task, options.template)
        gen_prompt = self.generation_prompt(task, example, tpl, base)
        params = self.sampling(options, tpl)
        scorer_name = options.scorer_model or service.host(options.model).name
        try:  # an unknown scorer fails before any generation
            service.host(scorer_name)
        except InvalidArgument as exc:
            raise InvalidArgument("scorer_model", str(exc).removeprefix("model: ")) from exc
        results, params, gen_host = await service.generate_batch(
            options.model, [gen_prompt], params, request_id
        )
        samples = results[0]
        candidates = [self.judge(task, example, s.text, options) for s in samples]
        ref_score, scorer_host = await self._score(service, scorer_name, base, candidates,
                                                   options)
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
        self._choose(record, ref_score, options)
        record.provenance = {
            "generator": _host_provenance(service, gen_host),
            "scorer": _host_provenance(service, scorer_host),
            "template": tpl.key,
            "template_digest": tpl.digest,
            "prompt_template": task.zeroshot_template.key,
            **params.provenance(),
            "ppl_threshold": options.ppl_threshold,
            "require_correct": options.require_correct,
            "fallback": options.fallback,
            "usage": _usage(samples),
            "request_id": request_id,
        }
        return record

    def _check_request(self, example: Example, options: DistillOptions) -> Task:
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
        return task

    def template(self, task: Task, template: str) -> Template:
        """The generation template: ``template`` (an id or key) or the mode's default."""
        try:
            tpl = get_template(template) if template else self.templates[task.family]
        except KeyError as exc:
            raise InvalidArgument(
                "mode", f"{self.name} has no template for task {task.name!r}"
            ) from exc
        except ValueError as exc:
            raise InvalidArgument("template", str(exc)) from exc
        if tpl.task != task.family:
            raise InvalidArgument("template", f"{tpl.key} is for {tpl.task!r}, not {task.name!r}")
        self.check_template(tpl)
        return tpl

    def sampling(self, options: DistillOptions, tpl: Template) -> SamplingParams:
        """The request's sampling with this mode's candidate count and the template's
        stop strings and token budget (logprobs are not needed)."""
        n = options.num_candidates or self.default_num_candidates
        sampling = options.sampling
        if n > 1 and sampling.temperature == 0:
            raise InvalidArgument(
                "sampling.temperature", f"0 (greedy) with {n} candidates gives {n} identical ones"
            )
        return replace(
            sampling,
            n=n,
            max_new_tokens=sampling.max_new_tokens or tpl.max_new_tokens or 0,
            stop=tuple(dict.fromkeys((*tpl.stop, *sampling.stop))),
            logprobs=False,
            top_logprobs=0,
        )

    def judge(self, task: Task, example: Example, generated: str,
              options: DistillOptions) -> Candidate:
        """A candidate from one generated text, with why it is rejected (if it is)."""
        # In the student's answer format, so what is scored is what it trains on.
        text = task.training_response(generated.strip())
        answer = task.extract_answer(text) if text else None
        cand = Candidate(text=text, answer=answer, correct=task.is_correct(text, example))
        if not text:
            cand.rejected_because = "empty"
        elif own := self.own_rejection(text):
            cand.rejected_because = own
        elif not cand.correct and not self.may_choose_incorrect(options):
            cand.rejected_because = "no answer" if answer is None else "wrong answer"
        elif reasoning_words(text) < MIN_REASONING_WORDS:
            cand.rejected_because = "no reasoning"
        return cand

    @staticmethod
    async def _score(service: TeacherService, scorer_name: str, base: dict,
                     candidates: list[Candidate], options: DistillOptions):
        """Score every non-empty candidate and the reference in one call; the
        reference's score and the scorer's host."""
        train_prompt = base["prompt"]
        scored = [i for i, c in enumerate(candidates) if c.text]
        items = [ScoreItem(train_prompt, candidates[i].text) for i in scored]
        items.append(ScoreItem(train_prompt, base["reference"]))
        scores, scorer_host = await service.score(scorer_name, items, options.ppl_threshold)
        for i, s in zip(scored, scores, strict=False):
            c = candidates[i]
            c.nll_sum, c.num_tokens, c.perplexity = s.nll_sum, s.num_tokens, s.perplexity
            c.frac_above_threshold = s.frac_above_threshold
        return scores[-1], scorer_host

    def _choose(self, record: Record, ref_score, options: DistillOptions) -> None:
        """Accept the passing candidate of lowest perplexity, else fall back or reject."""
        candidates = record.candidates
        passing = [i for i, c in enumerate(candidates) if not c.rejected_because]
        if passing:
            best = min(passing, key=lambda i: candidates[i].perplexity or float("inf"))
            chosen = candidates[best]
            kind = "usable" if self.may_choose_incorrect(options) else "correct"
            record.status, record.response, record.chosen_index = "accepted", chosen.text, best
            record.reason = (
                f"lowest perplexity ({chosen.perplexity:.3f}) of {len(passing)} {kind} "
                f"candidate(s) out of {len(candidates)}"
            )
            mean = chosen.nll_sum / chosen.num_tokens if chosen.num_tokens else 0.0
            record.response_nll, record.response_tokens = mean, chosen.num_tokens
            record.response_perplexity = chosen.perplexity
            record.response_frac_above_threshold = chosen.frac_above_threshold
            return
        why = _rejections(candidates)
        if options.fallback == "reference":
            record.status, record.response = "fell_back", record.reference
            record.reason = f"no candidate passed ({why}); fell back to the reference"
            record.response_nll, record.response_tokens = ref_score.mean_nll, ref_score.num_tokens
            record.response_perplexity = ref_score.perplexity
            record.response_frac_above_threshold = ref_score.frac_above_threshold
        else:
            record.reason = f"no candidate passed ({why}); rejected"


class SampledAnswers(DistillMode):
    """A mode that samples several answers to the question itself (trace, best_of_n;
    best_of_n overrides ``templates``)."""

    default_num_candidates = 4
    default_temperature = 0.7  # several candidates must differ
    templates: ClassVar[dict[str, Template]] = COT_TEMPLATES


def _host_provenance(service: TeacherService, host: ModelHost) -> dict:
    p = service.provenance(host)
    return {
        "model": p.model,
        "revision": p.revision,
        "engine": p.engine,
        "engine_version": p.engine_version,
    }


def _usage(samples: list[SampleResult]) -> dict:
    return {
        "prompt_tokens": sum(s.prompt_tokens for s in samples),
        "completion_tokens": sum(s.completion_tokens for s in samples),
    }


def _rejections(candidates: list[Candidate]) -> str:
    counts: dict[str, int] = {}
    for c in candidates:
        key = c.rejected_because.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in counts.items())
