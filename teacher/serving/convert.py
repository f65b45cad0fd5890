"""Pure converters between protobuf messages and the service's types.

The one place the wire's spellings meet the service's: sampling settings
(``params_from_pb`` / ``params_to_pb``), stop reasons, distillation modes (from the
mode registry), records (whose candidates keep their on-disk key names).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from google.protobuf.message import Message

from teacher.api import teacher_pb2 as pb
from teacher.core.records import CANDIDATE_KEYS, Candidate, Record
from teacher.core.tasks import Example
from teacher.core.topk import TopK
from teacher.distill.modes import DEFAULT_PPL_THRESHOLD, DistillOptions, mode_names, wire_value
from teacher.serving.engine import ModelInfo
from teacher.serving.errors import InvalidArgument
from teacher.serving.sampling import SamplingParams
from teacher.serving.service import (
    AdapterInfo,
    LogprobEntry,
    ModelLoad,
    Provenance,
    SampleChunk,
    SampleResult,
    ScoreItem,
    ScoreResult,
    ServedModelInfo,
    TokenizeResult,
)
from teacher.serving.tokenization import PromptInput


def _to_shared(value: Any, message: type[Message], **given: Any) -> Message:
    """``message`` built from the dataclass ``value``'s fields of the same names, so the
    copy is written once and a field added to both sides travels without an edit;
    ``given`` supplies or overrides the rest."""
    names = message.DESCRIPTOR.fields_by_name
    shared = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
              if f.name in names and f.name not in given}
    return message(**shared, **given)


def _from_shared(message: Message, cls: type, **given: Any) -> Any:
    """``cls`` built from ``message``'s fields of the same names (repeated fields as
    tuples); ``given`` supplies or overrides the rest."""
    names = message.DESCRIPTOR.fields_by_name
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in names and f.name not in given:
            value = getattr(message, f.name)
            values[f.name] = tuple(value) if names[f.name].is_repeated else value
    return cls(**values, **given)


STOP_REASON_TO_PB = {
    "max_tokens": pb.STOP_REASON_MAX_TOKENS,
    "eos": pb.STOP_REASON_EOS,
    "stop_sequence": pb.STOP_REASON_STOP_SEQUENCE,
    "cancelled": pb.STOP_REASON_CANCELLED,
    "time_limit": pb.STOP_REASON_TIME_LIMIT,
    "error": pb.STOP_REASON_ERROR,
}
STOP_REASON_FROM_PB = {v: k for k, v in STOP_REASON_TO_PB.items()}


# ---------------------------------------------------------------- requests


def prompt_from_pb(prompt: pb.Prompt, field: str = "prompt") -> PromptInput:
    kind = prompt.WhichOneof("kind")
    if kind == "text":
        return prompt.text
    if kind == "chat":
        return [{"role": m.role, "content": m.content} for m in prompt.chat.messages]
    raise InvalidArgument(field, "set either text or chat")


def params_from_pb(sampling: pb.SamplingParams) -> SamplingParams:
    return SamplingParams(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        seed=sampling.seed if sampling.HasField("seed") else None,
        n=sampling.n or 1,
        max_new_tokens=sampling.max_new_tokens,
        min_new_tokens=sampling.min_new_tokens,
        stop=tuple(sampling.stop),
        logprobs=sampling.return_logprobs,
        top_logprobs=sampling.top_logprobs,
        time_limit_s=sampling.time_limit_s,
    )


def score_items_from_pb(items) -> list[ScoreItem]:
    return [
        ScoreItem(prompt_from_pb(it.prompt, f"items[{i}].prompt"), it.completion)
        for i, it in enumerate(items)
    ]


# ---------------------------------------------------------------- responses


def provenance_to_pb(p: Provenance) -> pb.Provenance:
    return _to_shared(p, pb.Provenance)


def logprobs_to_pb(entries) -> list[pb.TokenLogprob]:
    return [
        pb.TokenLogprob(
            token_id=e.token_id,
            logprob=e.logprob,
            token=e.token,
            top=[pb.TopLogprob(token_id=t, logprob=lp, token=s) for t, lp, s in e.top],
        )
        for e in entries
    ]


def chunk_to_pb(chunk: SampleChunk) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        index=chunk.index,
        chunk=pb.GenerateChunk(
            text=chunk.text, token_ids=chunk.token_ids, logprobs=logprobs_to_pb(chunk.logprobs)
        ),
    )


def completion_to_pb(r: SampleResult) -> pb.Completion:
    return pb.Completion(
        stop_reason=STOP_REASON_TO_PB[r.stop_reason],
        text=r.text,
        token_ids=r.token_ids,
        logprobs=logprobs_to_pb(r.logprobs),
        stop_sequence=r.stop_sequence,
        usage=pb.Usage(prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens),
        timing=pb.Timing(
            queue_s=r.queue_s,
            time_to_first_token_s=r.time_to_first_token_s,
            total_s=r.total_s,
            tokens_per_s=r.tokens_per_s,
        ),
        error=r.error,
    )


def final_to_pb(r: SampleResult, provenance: Provenance) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        index=r.index, final=completion_to_pb(r), provenance=provenance_to_pb(provenance)
    )


def score_result_to_pb(r: ScoreResult, return_tokens: bool) -> pb.ScoreResult:
    tokens = []
    if return_tokens:
        tokens = [
            pb.TokenScore(token_id=t, logprob=lp, token=s)
            for t, lp, s in zip(r.token_ids, r.logprobs, r.tokens, strict=True)
        ]
    return _to_shared(r, pb.ScoreResult, tokens=tokens,
                      top_logprobs=top_logprobs_to_pb(r.top_logprobs))


def top_logprobs_to_pb(top: TopK | None) -> pb.TopLogprobs | None:
    if top is None:
        return None
    return pb.TopLogprobs(k=top.k, token_ids=top.token_ids.ravel().tolist(),
                          logprobs=top.logprobs.ravel().tolist(),
                          tail_logprobs=top.tail_logprobs.tolist())


def model_info_to_pb(info: ModelInfo, is_default: bool) -> pb.ModelInfo:
    return _to_shared(info, pb.ModelInfo, is_default=is_default)


def adapter_to_pb(adapter: AdapterInfo) -> pb.Adapter:
    return _to_shared(adapter, pb.Adapter)


# ---------------------------------------------------------------- client side


def logprobs_from_pb(entries) -> list[LogprobEntry]:
    return [
        LogprobEntry(
            e.token_id, e.logprob, e.token, tuple((t.token_id, t.logprob, t.token) for t in e.top)
        )
        for e in entries
    ]


def provenance_from_pb(p: pb.Provenance) -> Provenance:
    return _from_shared(p, Provenance)


def generate_event_from_pb(message: pb.GenerateResponse) -> SampleChunk | SampleResult:
    """One streamed message: a chunk, or a sample's final result (with its provenance)."""
    if message.WhichOneof("event") == "final":
        result = completion_from_pb(message.final, message.index)
        if message.HasField("provenance"):
            result.provenance = provenance_from_pb(message.provenance)
        return result
    chunk = message.chunk
    return SampleChunk(
        message.index, chunk.text, tuple(chunk.token_ids), tuple(logprobs_from_pb(chunk.logprobs))
    )


def score_result_from_pb(r: pb.ScoreResult) -> ScoreResult:
    """Token ids, logprobs and strings are on the wire only when ``return_tokens`` was
    asked for; otherwise they are empty."""
    return _from_shared(
        r,
        ScoreResult,
        token_ids=tuple(t.token_id for t in r.tokens),
        logprobs=tuple(t.logprob for t in r.tokens),
        tokens=tuple(t.token for t in r.tokens),
        top_logprobs=top_logprobs_from_pb(r.top_logprobs) if r.HasField("top_logprobs")
        else None,
    )


def top_logprobs_from_pb(t: pb.TopLogprobs) -> TopK:
    return TopK.from_flat(t.k, list(t.token_ids), list(t.logprobs), list(t.tail_logprobs))


def tokenize_from_pb(r: pb.TokenizeResponse) -> TokenizeResult:
    return TokenizeResult(
        token_ids=tuple(r.token_ids),
        count=r.count,
        tokens=tuple(r.tokens),
        provenance=provenance_from_pb(r.provenance) if r.HasField("provenance") else None,
    )


def model_info_from_pb(m: pb.ModelInfo) -> ServedModelInfo:
    return _from_shared(m, ServedModelInfo)


def adapter_from_pb(m: pb.Adapter, replaced: bool = False) -> AdapterInfo:
    return _from_shared(m, AdapterInfo, replaced=replaced)


def model_load_from_pb(m: pb.ModelLoad) -> ModelLoad:
    return ModelLoad(m.model, m.running, m.waiting, m.max_queue)


def completion_from_pb(c: pb.Completion, index: int = 0) -> SampleResult:
    return SampleResult(
        index=index,
        stop_reason=STOP_REASON_FROM_PB.get(c.stop_reason, "error"),
        text=c.text,
        token_ids=list(c.token_ids),
        logprobs=logprobs_from_pb(c.logprobs),
        stop_sequence=c.stop_sequence,
        prompt_tokens=c.usage.prompt_tokens,
        completion_tokens=c.usage.completion_tokens,
        queue_s=c.timing.queue_s,
        time_to_first_token_s=c.timing.time_to_first_token_s,
        total_s=c.timing.total_s,
        tokens_per_s=c.timing.tokens_per_s,
        error=c.error,
    )


def prompt_to_pb(prompt: PromptInput) -> pb.Prompt:
    if isinstance(prompt, str):
        return pb.Prompt(text=prompt)
    return pb.Prompt(
        chat=pb.ChatMessages(
            messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in prompt]
        )
    )


def params_to_pb(p: SamplingParams) -> pb.SamplingParams:
    msg = pb.SamplingParams(
        temperature=p.temperature,
        top_p=p.top_p,
        top_k=p.top_k,
        n=p.n,
        max_new_tokens=p.max_new_tokens,
        min_new_tokens=p.min_new_tokens,
        stop=list(p.stop),
        return_logprobs=p.logprobs,
        top_logprobs=p.top_logprobs,
        time_limit_s=p.time_limit_s,
    )
    if p.seed is not None:
        msg.seed = p.seed
    return msg


# ---------------------------------------------------------------- Distill

DISTILL_MODE_TO_PB = {name: wire_value(name) for name in mode_names()}
DISTILL_MODE_FROM_PB = {v: k for k, v in DISTILL_MODE_TO_PB.items()}


def example_to_pb(example: Example) -> pb.TaskExample:
    return _to_shared(example, pb.TaskExample, reference=example.answer)


def example_from_pb(example: pb.TaskExample) -> Example:
    return _from_shared(example, Example, answer=example.reference)


def distill_request_to_pb(example: Example, options: DistillOptions) -> pb.DistillRequest:
    request = pb.DistillRequest(
        example=example_to_pb(example),
        mode=DISTILL_MODE_TO_PB[options.mode],
        model=options.model,
        scorer_model=options.scorer_model,
        num_candidates=options.num_candidates,
        template=options.template,
        sampling=params_to_pb(options.sampling),
        ppl_threshold=options.ppl_threshold,
        keep_incorrect=not options.require_correct,
        reject_on_failure=options.fallback == "reject",
    )
    return request


def distill_request_from_pb(request: pb.DistillRequest) -> tuple[Example, DistillOptions]:
    if not request.HasField("example"):
        raise InvalidArgument("example", "missing")
    mode = DISTILL_MODE_FROM_PB.get(request.mode)
    if mode is None:
        *others, last = (name.upper() for name in DISTILL_MODE_TO_PB)
        raise InvalidArgument("mode", f"set {', '.join(others)} or {last}")
    options = DistillOptions(
        mode=mode,
        model=request.model,
        scorer_model=request.scorer_model,
        num_candidates=request.num_candidates,
        template=request.template,
        sampling=params_from_pb(request.sampling),
        ppl_threshold=(
            request.ppl_threshold if request.HasField("ppl_threshold") else DEFAULT_PPL_THRESHOLD
        ),
        require_correct=not request.keep_incorrect,
        fallback="reject" if request.reject_on_failure else "reference",
    )
    return example_from_pb(request.example), options


_CANDIDATE_OPTIONAL = ("answer", "correct", "nll_sum", "num_tokens", "perplexity",
                       "frac_above_threshold")
_RECORD_OPTIONAL = (
    "chosen_index",
    "response_nll",
    "response_tokens",
    "reference_nll",
    "reference_tokens",
    "response_perplexity",
    "response_frac_above_threshold",
    "reference_perplexity",
    "reference_frac_above_threshold",
)
_RECORD_PLAIN = ("id", "task", "split", "mode", "question", "reference", "target", "response",
                 "status", "reason", "schema")
_MODEL_PROVENANCE = ("model", "revision", "engine", "engine_version")


def _set_optional(msg, obj, names, keys: dict[str, str] | None = None) -> None:
    """Copy the attributes ``names`` that are set; ``keys`` renames attribute -> field."""
    for name in names:
        value = getattr(obj, name)
        if value is not None:
            setattr(msg, (keys or {}).get(name, name), value)


def _get_optional(msg, names, keys: dict[str, str] | None = None) -> dict:
    fields = {name: (keys or {}).get(name, name) for name in names}
    return {name: getattr(msg, f) if msg.HasField(f) else None for name, f in fields.items()}


def _model_provenance_to_pb(p: dict) -> pb.Provenance:
    return pb.Provenance(**{k: p.get(k, "") for k in _MODEL_PROVENANCE})


def distill_provenance_to_pb(p: dict) -> pb.DistillProvenance:
    usage = p.get("usage", {})
    return pb.DistillProvenance(
        generator=_model_provenance_to_pb(p.get("generator", {})),
        scorer=_model_provenance_to_pb(p.get("scorer", {})),
        template=p.get("template", ""),
        template_digest=p.get("template_digest", ""),
        prompt_template=p.get("prompt_template", ""),
        sampling=params_to_pb(SamplingParams.from_provenance(p)) if "sampling" in p else None,
        ppl_threshold=p.get("ppl_threshold", 0.0),
        require_correct=p.get("require_correct", True),
        fallback=p.get("fallback", ""),
        usage=pb.Usage(
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
        ),
        request_id=p.get("request_id", ""),
    )


def distill_provenance_from_pb(p: pb.DistillProvenance) -> dict:
    return {
        "generator": {k: getattr(p.generator, k) for k in _MODEL_PROVENANCE},
        "scorer": {k: getattr(p.scorer, k) for k in _MODEL_PROVENANCE},
        "template": p.template,
        "template_digest": p.template_digest,
        "prompt_template": p.prompt_template,
        **params_from_pb(p.sampling).provenance(),
        "ppl_threshold": p.ppl_threshold,
        "require_correct": p.require_correct,
        "fallback": p.fallback,
        "usage": {
            "prompt_tokens": p.usage.prompt_tokens,
            "completion_tokens": p.usage.completion_tokens,
        },
        "request_id": p.request_id,
    }


def record_to_pb(record: Record) -> pb.DistillRecord:
    msg = pb.DistillRecord(
        **{name: getattr(record, name) for name in _RECORD_PLAIN},
        prompt=prompt_to_pb(record.prompt).chat,
        provenance=distill_provenance_to_pb(record.provenance),
    )
    _set_optional(msg, record, _RECORD_OPTIONAL)
    for c in record.candidates:
        cand = msg.candidates.add(text=c.text, rejected_because=c.rejected_because)
        _set_optional(cand, c, _CANDIDATE_OPTIONAL, CANDIDATE_KEYS)
    return msg


def record_from_pb(msg: pb.DistillRecord) -> Record:
    # Floats travel as doubles and token counts as uint32, so nothing is rounded.
    return Record(
        **{name: getattr(msg, name) for name in _RECORD_PLAIN},
        prompt=[{"role": m.role, "content": m.content} for m in msg.prompt.messages],
        candidates=[
            Candidate(
                text=c.text,
                rejected_because=c.rejected_because,
                **_get_optional(c, _CANDIDATE_OPTIONAL, CANDIDATE_KEYS),
            )
            for c in msg.candidates
        ],
        provenance=distill_provenance_from_pb(msg.provenance),
        **_get_optional(msg, _RECORD_OPTIONAL),
    )
