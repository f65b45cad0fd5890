"""Pure converters between protobuf messages and the service's types."""

from __future__ import annotations

from teacher.api import teacher_pb2 as pb
from teacher.engine import ModelInfo
from teacher.errors import InvalidArgument
from teacher.service import (
    GenerationParams,
    LogprobEntry,
    Provenance,
    SampleChunk,
    SampleResult,
    ScoreItem,
    ScoreResult,
)
from teacher.tokenization import PromptInput

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


def params_from_pb(sampling: pb.SamplingParams) -> GenerationParams:
    return GenerationParams(
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
    return pb.Provenance(
        model=p.model,
        revision=p.revision,
        engine=p.engine,
        engine_version=p.engine_version,
        seed=p.seed,
        request_id=p.request_id,
    )


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
    return pb.ScoreResult(
        tokens=tokens,
        nll_sum=r.nll_sum,
        num_tokens=r.num_tokens,
        mean_nll=r.mean_nll,
        perplexity=r.perplexity,
        frac_above_threshold=r.frac_above_threshold,
        prompt_tokens=r.prompt_tokens,
    )


def model_info_to_pb(info: ModelInfo, is_default: bool) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=info.name,
        source=info.source,
        revision=info.revision,
        engine=info.engine,
        engine_version=info.engine_version,
        context_length=info.context_length,
        vocab_size=info.vocab_size,
        eos_token_ids=info.eos_token_ids,
        dtype=info.dtype,
        device=info.device,
        is_default=is_default,
    )


# ---------------------------------------------------------------- client side


def completion_from_pb(c: pb.Completion) -> SampleResult:
    return SampleResult(
        index=0,
        stop_reason=STOP_REASON_FROM_PB.get(c.stop_reason, "error"),
        text=c.text,
        token_ids=list(c.token_ids),
        logprobs=[
            LogprobEntry(
                e.token_id,
                e.logprob,
                e.token,
                tuple((t.token_id, t.logprob, t.token) for t in e.top),
            )
            for e in c.logprobs
        ],
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


def params_to_pb(p: GenerationParams) -> pb.SamplingParams:
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
