"""The teacher service, independent of the wire: named models, validation,
admission control, ``n`` samples, stop sequences, time limits, scoring.

The gRPC servicer only converts protobuf messages to the types here and back.
Everything a caller can get wrong is checked here and raised as
``InvalidArgument`` naming the request field.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace

from teacher.core.topk import TopK
from teacher.serving.adapters import AdapterSpec, check_name, read_adapter
from teacher.serving.engine import (
    Engine,
    EngineAdapter,
    EngineRequest,
    ModelInfo,
    ScoreInput,
    ScoreOutput,
)
from teacher.serving.errors import (
    AlreadyExists,
    EngineUnavailable,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    clip,
)
from teacher.serving.sampling import SamplingParams
from teacher.serving.tokenization import (
    PromptInput,
    PromptTokenizer,
    StreamDecoder,
    prompt_chars,
)

log = logging.getLogger(__name__)

STOP_REASONS = ("max_tokens", "eos", "stop_sequence", "cancelled", "time_limit", "error")
_ENGINE_FINISH = {"eos": "eos", "length": "max_tokens", "abort": "cancelled", "error": "error"}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; beyond these a request is INVALID_ARGUMENT."""

    default_max_new_tokens: int = 256
    max_new_tokens: int = 4096
    max_n: int = 16
    max_stop: int = 16
    max_stop_chars: int = 256
    max_top_logprobs: int = 20
    max_batch_prompts: int = 1024
    max_score_items: int = 1024
    # Admission, per model: sequences in flight (a Generate counts n, a GenerateBatch
    # prompts x n, a Score its items) and their tokens (prompt + max_new_tokens, or
    # prompt + completion); beyond either, RESOURCE_EXHAUSTED.
    max_queue: int = 256
    max_queue_tokens: int = 524_288
    # Scored (prompt, completion) pairs remembered per model: a data job scores each
    # reference once per mode, and the engine's output for the same tokens is the same.
    score_cache_items: int = 4096
    # Score's top_k: at most this many tokens per position (vLLM's own default bound,
    # max_logprobs, is 20 too), and a reply's top-k arrays at most this many bytes
    # (k x 8 + 4 per completion token on the wire), so that a reply fits the same
    # 16 MiB as the largest request; beyond it RESOURCE_EXHAUSTED: split the request.
    max_score_top_k: int = 20
    max_top_k_reply_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class LogprobEntry:
    token_id: int
    logprob: float
    token: str
    top: tuple[tuple[int, float, str], ...] = ()


@dataclass(frozen=True)
class SampleChunk:
    index: int
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[LogprobEntry, ...] = ()


@dataclass
class SampleResult:
    index: int
    stop_reason: str  # one of STOP_REASONS
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[LogprobEntry] = field(default_factory=list)
    stop_sequence: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_s: float = 0.0  # admitted -> the engine's first output for it (slot wait + prefill)
    time_to_first_token_s: float = 0.0
    total_s: float = 0.0
    tokens_per_s: float = 0.0
    error: str = ""  # with stop_reason "error": the engine failed this sample only
    provenance: Provenance | None = None


@dataclass(frozen=True)
class Provenance:
    model: str
    revision: str
    engine: str
    engine_version: str
    seed: int = 0
    request_id: str = ""


@dataclass(frozen=True)
class ScoreItem:
    prompt: PromptInput
    completion: str


@dataclass(frozen=True)
class ScoreResult:
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    tokens: tuple[str, ...]
    nll_sum: float
    num_tokens: int
    mean_nll: float
    perplexity: float
    frac_above_threshold: float
    prompt_tokens: int
    top_logprobs: TopK | None = None  # with top_k: the scorer's top-k at each token


@dataclass(frozen=True)
class TokenizeResult:
    token_ids: tuple[int, ...]
    count: int
    tokens: tuple[str, ...] = ()  # when asked for
    provenance: Provenance | None = None


@dataclass(frozen=True)
class ServedModelInfo(ModelInfo):
    """A served model as listed to clients: its engine's description, and whether
    requests naming no model go to it. A loaded adapter is listed under its own name
    with its base model, its LoRA rank, its directory as ``source`` and its content
    hash as ``revision`` (the rest is its base's)."""

    is_default: bool = False
    base_model: str = ""  # adapters only
    adapter_rank: int = 0  # adapters only


@dataclass(frozen=True)
class AdapterInfo:
    """A loaded LoRA adapter, as LoadAdapter / UnloadAdapter report it."""

    name: str
    base_model: str
    rank: int
    path: str
    revision: str  # content hash of its files
    replaced: bool = False  # load only: an adapter of this name had other weights, now swapped


@dataclass(frozen=True)
class ModelLoad:
    model: str
    running: int  # admitted sequences (and score items) the engine is working on
    waiting: int  # admitted sequences not yet started by the engine
    max_queue: int


def summarize_logprobs(
    logprobs: Sequence[float], ppl_threshold: float = 0.0
) -> tuple[float, float, float, float]:
    """(NLL sum, mean NLL, perplexity, share of tokens with exp(-logprob) > threshold)."""
    n = len(logprobs)
    if n == 0:
        return 0.0, 0.0, 1.0, 0.0
    nll_sum = -math.fsum(logprobs)
    mean = nll_sum / n
    above = 0.0
    if ppl_threshold > 0:
        # exp(-lp) > t  <=>  -lp > log(t)
        above = sum(1 for lp in logprobs if -lp > math.log(ppl_threshold)) / n
    return nll_sum, mean, math.exp(mean), above


class ModelHost:
    """One named model: its engine and its admission counters."""

    def __init__(self, name: str, engine: Engine, max_queue: int, max_queue_tokens: int = 0):
        self.name = name
        self.engine = engine
        self.max_queue = max_queue  # sequences in flight
        self.max_queue_tokens = max_queue_tokens  # their tokens; 0 = unbounded
        self.admitted = 0  # sequences in flight now
        self.admitted_tokens = 0
        self.served = 0  # requests admitted since start
        self.healthy = False
        self.score_cache: collections.OrderedDict[tuple, list[float]] = (
            collections.OrderedDict())
        # Tokenizing (and chat templating) is CPU work that must not stall the event
        # loop; one thread per model, as Hugging Face tokenizers are not re-entrant.
        self.tokenize_executor = ThreadPoolExecutor(1, thread_name_prefix=f"tokenize-{name}")

    @property
    def info(self) -> ModelInfo:
        return self.engine.info()

    @contextlib.contextmanager
    def admit(self, sequences: int = 1, tokens: int = 0):
        """Hold ``sequences`` sequences of ``tokens`` tokens in all while in flight."""
        if sequences > self.max_queue or (self.max_queue_tokens and tokens > self.max_queue_tokens):
            raise ResourceExhausted(
                f"this request needs {sequences} sequences ({tokens} tokens), more than model "
                f"{self.name!r} admits at once (max_queue={self.max_queue}, max_queue_tokens="
                f"{self.max_queue_tokens}); split it into smaller requests"
            )
        if self.admitted + sequences > self.max_queue or (
            self.max_queue_tokens and self.admitted_tokens + tokens > self.max_queue_tokens
        ):
            raise ResourceExhausted(
                f"model {self.name!r} has {self.admitted} sequences ({self.admitted_tokens} "
                f"tokens) in flight (max_queue={self.max_queue}, max_queue_tokens="
                f"{self.max_queue_tokens}); retry later"
            )
        self.admitted += sequences
        self.admitted_tokens += tokens
        self.served += 1
        try:
            yield
        finally:
            self.admitted -= sequences
            self.admitted_tokens -= tokens


class _AdapterEngine:
    """A base model's engine seen through one loaded version of an adapter: requests
    carry that version's key; everything else is the base engine itself."""

    def __init__(self, base: Engine, key: str):
        self._base = base
        self.key = key

    def __getattr__(self, name: str):
        return getattr(self._base, name)

    def generate(self, request: EngineRequest):
        return self._base.generate(replace(request, adapter=self.key))

    async def score(self, items: Sequence[ScoreInput], **options) -> list[ScoreOutput]:
        return await self._base.score(items, adapter=self.key, **options)


class AdapterHost(ModelHost):
    """A loaded adapter under its own name: requests run on its base model's engine
    under this version of its weights (``key``), share the base's admission counters,
    tokenizer thread and health, and keep their own score cache (scores depend on the
    weights). A replaced or unloaded version is *retired*: requests already admitted
    finish under it, then its weights are freed (*released*); a request that looked it
    up but was not admitted before that gets UNAVAILABLE (the client retries, and finds
    the new version or NOT_FOUND)."""

    def __init__(
        self, base: ModelHost, spec: AdapterSpec, key: str,
        on_idle: Callable[[AdapterHost], None],
    ):
        self.name = spec.name
        self.base = base
        self.spec = spec
        self.key = key
        self.engine = _AdapterEngine(base.engine, key)  # type: ignore[assignment]
        self.score_cache = collections.OrderedDict()
        self.tokenize_executor = base.tokenize_executor
        self.served = 0
        self.in_flight = 0  # admitted requests under this version
        self.retired = False
        self.released = False
        self._on_idle = on_idle
        shared = {f.name: getattr(base.info, f.name) for f in fields(ModelInfo)}
        shared.update(name=spec.name, source=spec.path, revision=spec.revision)
        self._info = ServedModelInfo(**shared, base_model=base.name, adapter_rank=spec.rank)

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def healthy(self) -> bool:  # type: ignore[override]
        return self.base.healthy and not self.released

    @property
    def max_queue(self) -> int:  # type: ignore[override]
        return self.base.max_queue

    @property
    def admitted(self) -> int:  # type: ignore[override]
        return self.base.admitted

    def describe(self, replaced: bool = False) -> AdapterInfo:
        s = self.spec
        return AdapterInfo(s.name, self.base.name, s.rank, s.path, s.revision, replaced)

    @contextlib.contextmanager
    def admit(self, sequences: int = 1, tokens: int = 0):
        if self.released:
            raise EngineUnavailable(
                f"adapter {self.name!r} was replaced or unloaded while this request was "
                "being prepared; retry"
            )
        with self.base.admit(sequences, tokens):
            self.served += 1
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1
                if self.retired and self.in_flight == 0:
                    self._on_idle(self)


class TeacherService:
    def __init__(self, hosts: Sequence[ModelHost], limits: Limits | None = None):
        if not hosts:
            raise ValueError("a teacher service needs at least one model")
        self.hosts = {h.name: h for h in hosts}
        self.default = hosts[0].name
        self.limits = limits or Limits()
        self.draining = False
        self.failed: list[str] = []  # models whose engine failed (they stay NOT_SERVING)
        self._health_listeners: list[Callable[[], None]] = []
        # Loaded adapters by name; versions retired but still finishing requests; names
        # unloaded (requests naming them get NOT_FOUND rather than "unknown model").
        self.adapters: dict[str, AdapterHost] = {}
        self._retired: set[AdapterHost] = set()
        self._unloaded: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._adapter_keys = itertools.count(1)
        self._adapter_lock = asyncio.Lock()  # one load / unload at a time
        self._releases: set[asyncio.Task] = set()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for host in self.hosts.values():
            await host.engine.start()
            host.healthy = True
            host.engine.on_failure(functools.partial(self._engine_failed, host))
        self._notify()

    async def shutdown(self) -> None:
        self.draining = True  # an orderly stop: engines ending now have not failed
        for host in self.hosts.values():
            host.healthy = False
            await host.engine.shutdown()
            host.tokenize_executor.shutdown(wait=False, cancel_futures=True)
        self._notify()

    @property
    def serving(self) -> bool:
        return not self.draining and all(h.healthy for h in self.hosts.values())

    def model_serving(self, name: str) -> bool:
        host = self.hosts.get(name)
        return bool(host and host.healthy and not self.draining)

    def on_health_change(self, listener: Callable[[], None]) -> None:
        self._health_listeners.append(listener)

    def begin_drain(self) -> None:
        self.draining = True
        self._notify()

    def in_flight(self) -> int:
        return sum(h.admitted for h in self.hosts.values())

    def _notify(self) -> None:
        for listener in self._health_listeners:
            listener()

    def _engine_failed(self, host: ModelHost, exc: BaseException) -> None:
        """The engine reported it stopped serving (see ``Engine.on_failure``)."""
        if host.healthy and not self.draining:
            log.error("engine of model %r failed: %s; marking it NOT_SERVING", host.name, exc)
            host.healthy = False
            self.failed.append(host.name)
            self._notify()

    # ------------------------------------------------------------ lookups

    def host(self, model: str) -> ModelHost:
        name = model or self.default
        host = self.hosts.get(name) or self.adapters.get(name)
        if host is None:
            if name in self._unloaded:
                raise NotFound(f"model: adapter {name!r} is not loaded (it was unloaded)")
            raise InvalidArgument(
                "model",
                f"unknown model {clip(name)!r}; serving {sorted(self.hosts)}"
                + (f" and adapters {sorted(self.adapters)}" if self.adapters else ""),
            )
        if not host.healthy:
            raise EngineUnavailable(f"model {name!r} is not serving")
        if self.draining:
            raise EngineUnavailable("the server is shutting down")
        return host

    def provenance(self, host: ModelHost, seed: int = 0, request_id: str = "") -> Provenance:
        info = host.info
        return Provenance(
            host.name, info.revision, info.engine, info.engine_version, seed, request_id
        )

    def list_models(self) -> list[tuple[ModelInfo, bool]]:
        listed = [(h.info, name == self.default) for name, h in self.hosts.items() if h.healthy]
        return listed + [(a.info, False) for a in self.adapters.values() if a.healthy]

    def load(self, model: str = "") -> list[tuple[str, int, int, int]]:
        names = [model or self.default] if model else list(self.hosts)
        out = []
        for name in names:
            host = self.hosts.get(name)
            if name in self.adapters:  # an adapter shares its base's engine and admission
                host = self.adapters[name].base
            if host is None:
                raise InvalidArgument(
                    "model", f"unknown model {clip(name)!r}; serving {sorted(self.hosts)}"
                )
            load = host.engine.load()
            waiting = max(load.waiting, host.admitted - load.running)
            out.append((name, load.running, waiting, host.max_queue))
        return out

    # ------------------------------------------------------------ tokenize

    def tokenize(self, model: str, prompt: PromptInput, field_name: str = "prompt") -> list[int]:
        """For in-process callers (blocks while tokenizing); the RPCs use ``encode``."""
        host = self.host(model)
        return self._encode_prompt(host, prompt, field_name)

    async def encode(
        self, model: str, prompt: PromptInput, field_name: str = "prompt"
    ) -> list[int]:
        """``tokenize`` off the event loop."""
        host = self.host(model)
        return await self._encode_off_loop(host, prompt, field_name)

    async def _encode_off_loop(
        self, host: ModelHost, prompt: PromptInput, field_name: str, checked: bool = False
    ) -> list[int]:
        if not checked:  # cheap checks first, on the loop
            self._check_prompt(host, prompt, field_name)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            host.tokenize_executor, functools.partial(
                self._encode_prompt, host, prompt, field_name, checked=True)
        )

    async def _encode_completion(self, host: ModelHost, text: str) -> list[int]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            host.tokenize_executor, host.engine.tokenizer.encode_completion, text
        )

    def token_strings(self, model: str, ids: Sequence[int]) -> list[str]:
        return self.host(model).engine.tokenizer.token_strings(ids)

    def _check_prompt(self, host: ModelHost, prompt: PromptInput, field_name: str,
                      extra_chars: int = 0) -> None:
        """What can be checked without tokenizing: non-empty, known roles, and a text
        length no tokenization could fit into the context (a 10 MB prompt is refused
        here in microseconds instead of tying a tokenizer up for seconds)."""
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidArgument(field_name, "empty prompt")
        else:
            if not prompt:
                raise InvalidArgument(f"{field_name}.chat.messages", "no messages")
            for i, message in enumerate(prompt):
                role = message.get("role", "")
                if role not in ("system", "user", "assistant", "tool"):
                    raise InvalidArgument(
                        f"{field_name}.chat.messages[{i}].role",
                        f"unknown role {clip(role)!r}; use system, user, assistant or tool",
                    )
        chars = prompt_chars(prompt) + extra_chars
        context = host.info.context_length
        if host.engine.tokenizer.min_tokens(chars) >= context:
            raise InvalidArgument(
                field_name,
                f"{chars} characters cannot fit the context length of {host.name!r} "
                f"({context} tokens)",
            )

    def _encode_prompt(self, host: ModelHost, prompt: PromptInput, field_name: str,
                       checked: bool = False) -> list[int]:
        if not checked:
            self._check_prompt(host, prompt, field_name)
        try:
            ids = host.engine.tokenizer.encode_prompt(prompt)
        except ValueError as exc:  # e.g. no chat template
            raise InvalidArgument(field_name, str(exc)) from exc
        if not ids:
            raise InvalidArgument(field_name, "the prompt tokenizes to nothing")
        context = host.info.context_length
        if len(ids) >= context:
            raise InvalidArgument(
                field_name, f"{len(ids)} tokens, the context length of {host.name!r} is {context}"
            )
        return ids

    # ------------------------------------------------------------ generate

    def check_params(self, host: ModelHost, params: SamplingParams) -> SamplingParams:
        """Validate and fill defaults (max_new_tokens, seed)."""
        lim = self.limits
        finite = all(
            math.isfinite(v) for v in (params.temperature, params.top_p, params.time_limit_s)
        )
        if not finite:
            raise InvalidArgument("sampling", "temperature, top_p and time_limit_s must be finite")
        if params.temperature < 0:
            raise InvalidArgument("sampling.temperature", f"{params.temperature} < 0")
        if not 0 <= params.top_p <= 1:
            raise InvalidArgument("sampling.top_p", f"{params.top_p} outside [0, 1]")
        if params.top_k < 0 or params.top_k > host.info.vocab_size:
            raise InvalidArgument("sampling.top_k", f"{params.top_k} outside [0, vocab size]")
        if not 1 <= params.n <= lim.max_n:
            raise InvalidArgument("sampling.n", f"{params.n} outside [1, {lim.max_n}]")
        max_new = params.max_new_tokens or lim.default_max_new_tokens
        if not 1 <= max_new <= lim.max_new_tokens:
            raise InvalidArgument(
                "sampling.max_new_tokens", f"{max_new} outside [1, {lim.max_new_tokens}]"
            )
        if params.min_new_tokens > max_new:
            raise InvalidArgument(
                "sampling.min_new_tokens", f"{params.min_new_tokens} > max_new_tokens {max_new}"
            )
        if len(params.stop) > lim.max_stop:
            raise InvalidArgument(
                "sampling.stop", f"{len(params.stop)} stop sequences, at most {lim.max_stop}"
            )
        for i, seq in enumerate(params.stop):
            if not seq or len(seq) > lim.max_stop_chars:
                raise InvalidArgument(
                    f"sampling.stop[{i}]", f"must have 1 to {lim.max_stop_chars} characters"
                )
        if params.top_logprobs > lim.max_top_logprobs:
            raise InvalidArgument(
                "sampling.top_logprobs", f"{params.top_logprobs} > {lim.max_top_logprobs}"
            )
        if params.time_limit_s < 0:
            raise InvalidArgument("sampling.time_limit_s", "negative")
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        if params.temperature == 0:
            top_p, top_k = 1.0, 0
        else:
            top_p = params.top_p if params.top_p > 0 else 1.0
            top_k = params.top_k
        return replace(
            params,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            max_new_tokens=max_new,
            logprobs=params.logprobs or params.top_logprobs > 0,
        )

    async def prepare_generation(
        self,
        model: str,
        prompts: Sequence[PromptInput],
        params: SamplingParams,
        prompt_field: str = "prompt",
    ) -> tuple[ModelHost, list[list[int]], SamplingParams]:
        host = self.host(model)
        params = self.check_params(host, params)
        encoded = []
        for i, prompt in enumerate(prompts):
            name = (
                prompt_field
                if len(prompts) == 1 and prompt_field == "prompt"
                else (f"{prompt_field}[{i}]")
            )
            ids = await self._encode_off_loop(host, prompt, name)
            context = host.info.context_length
            if len(ids) + params.max_new_tokens > context:
                raise InvalidArgument(
                    "sampling.max_new_tokens",
                    f"{name} has {len(ids)} tokens; with max_new_tokens={params.max_new_tokens} "
                    f"it exceeds the context length {context}",
                )
            encoded.append(ids)
        return host, encoded, params

    async def generate(
        self, model: str, prompt: PromptInput, params: SamplingParams, request_id: str = ""
    ) -> AsyncIterator[SampleChunk | SampleResult]:
        """Stream chunks and one final result per sample (merged over ``n``)."""
        received = time.perf_counter()
        host, (ids,), params = await self.prepare_generation(model, [prompt], params)
        request_id = request_id or uuid.uuid4().hex
        with host.admit(params.n, params.n * (len(ids) + params.max_new_tokens)):
            times = (received, time.perf_counter())
            if params.n == 1:
                async for event in self._sample(host, ids, params, 0, request_id, times):
                    yield event
                return
            queue: asyncio.Queue = asyncio.Queue()

            async def pump(index: int) -> None:
                try:
                    async for event in self._sample(host, ids, params, index, request_id, times):
                        await queue.put(event)
                except Exception as exc:  # surfaced to the consumer below
                    await queue.put(exc)

            tasks = [asyncio.create_task(pump(i)) for i in range(params.n)]
            try:
                remaining = params.n
                while remaining:
                    event = await queue.get()
                    if isinstance(event, BaseException):
                        raise event
                    if isinstance(event, SampleResult):
                        remaining -= 1
                    yield event
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def generate_batch(
        self,
        model: str,
        prompts: Sequence[PromptInput],
        params: SamplingParams,
        request_id: str = "",
    ) -> tuple[list[list[SampleResult]], SamplingParams, ModelHost]:
        received = time.perf_counter()
        if not prompts:
            raise InvalidArgument("prompts", "no prompts")
        if len(prompts) > self.limits.max_batch_prompts:
            raise InvalidArgument(
                "prompts", f"{len(prompts)} prompts, at most {self.limits.max_batch_prompts}"
            )
        host, encoded, params = await self.prepare_generation(model, prompts, params, "prompts")
        request_id = request_id or uuid.uuid4().hex

        async def run(p: int, index: int, times: tuple[float, float]) -> SampleResult:
            final: SampleResult | None = None
            async for event in self._sample(
                host, encoded[p], params, index, request_id, times, tag=f"-p{p}"
            ):
                if isinstance(event, SampleResult):
                    final = event
            assert final is not None
            return final

        tokens = sum(params.n * (len(ids) + params.max_new_tokens) for ids in encoded)
        with host.admit(len(encoded) * params.n, tokens):
            times = (received, time.perf_counter())
            flat = await asyncio.gather(
                *(run(p, i, times) for p in range(len(prompts)) for i in range(params.n))
            )
        n = params.n
        return [flat[p * n : (p + 1) * n] for p in range(len(prompts))], params, host

    async def _sample(
        self,
        host: ModelHost,
        prompt_ids: list[int],
        params: SamplingParams,
        index: int,
        request_id: str,
        times: tuple[float, float],
        tag: str = "",
    ) -> AsyncIterator[SampleChunk | SampleResult]:
        """One sample; ``times`` = (request received, request admitted), perf_counter."""
        assert params.seed is not None
        received, admitted = times
        engine = host.engine
        tokenizer = engine.tokenizer
        sampling = params.for_sample(index, self.limits.default_max_new_tokens)
        engine_id = f"{request_id}{tag}-{index}-{uuid.uuid4().hex[:8]}"
        decoder = StreamDecoder(tokenizer, params.stop)
        result = SampleResult(
            index=index,
            stop_reason="",
            prompt_tokens=len(prompt_ids),
            provenance=self.provenance(host, params.seed, request_id),
        )
        first_token_at = first_output_at = 0.0
        finished = False
        stream = engine.generate(EngineRequest(engine_id, prompt_ids, sampling))
        try:
            deadline = None
            if params.time_limit_s > 0:  # counted from when the request arrived
                elapsed = time.perf_counter() - received
                deadline = asyncio.get_running_loop().time() + params.time_limit_s - elapsed
            async with contextlib.aclosing(stream):
                try:
                    async with asyncio.timeout_at(deadline):
                        async for out in stream:
                            if not first_output_at:  # the engine's first step for it
                                first_output_at = time.perf_counter()
                                result.queue_s = first_output_at - admitted
                            ids = [t.token_id for t in out.tokens]
                            if ids and not first_token_at:
                                first_token_at = time.perf_counter()
                            delta = decoder.add(ids)
                            entries = self._logprob_entries(tokenizer, out.tokens, params)
                            result.token_ids.extend(ids)
                            result.logprobs.extend(entries)
                            if delta.stop_sequence is not None:
                                result.stop_reason = "stop_sequence"
                                result.stop_sequence = delta.stop_sequence
                            elif out.finish is not None:
                                result.stop_reason = _ENGINE_FINISH[out.finish]
                                if out.finish == "error":
                                    result.error = f"engine {host.info.engine!r} failed this sample"
                            if ids or delta.text:
                                yield SampleChunk(index, delta.text, tuple(ids), tuple(entries))
                            if result.stop_reason:
                                break
                except TimeoutError:
                    result.stop_reason = "time_limit"
            finished = True
        finally:
            if not finished:  # cancelled by the caller or failed: free the engine slot
                with contextlib.suppress(Exception):
                    await engine.abort(engine_id)
        if result.stop_reason != "stop_sequence":
            tail = decoder.flush()
            if tail:
                yield SampleChunk(index, tail, (), ())
        if not result.stop_reason:
            result.stop_reason = "max_tokens"
        now = time.perf_counter()
        result.text = decoder.text
        result.completion_tokens = len(result.token_ids)
        result.total_s = now - received
        if first_token_at:
            result.time_to_first_token_s = first_token_at - received
            decode_s = now - first_token_at
            if result.completion_tokens > 1 and decode_s > 0:
                result.tokens_per_s = (result.completion_tokens - 1) / decode_s
        yield result

    @staticmethod
    def _logprob_entries(tokenizer, steps, params: SamplingParams) -> list[LogprobEntry]:
        if not params.logprobs:
            return []
        entries = []
        for step in steps:
            top = tuple((tid, lp, tokenizer.token_strings([tid])[0]) for tid, lp in step.top)
            token = tokenizer.token_strings([step.token_id])[0]
            entries.append(LogprobEntry(step.token_id, float(step.logprob or 0.0), token, top))
        return entries

    # ------------------------------------------------------------ score

    async def score(
        self,
        model: str,
        items: Sequence[ScoreItem],
        ppl_threshold: float = 0.0,
        return_tokens: bool = False,
        top_k: int = 0,
    ) -> tuple[list[ScoreResult], ModelHost]:
        host = self.host(model)
        if not items:
            raise InvalidArgument("items", "no items to score")
        if len(items) > self.limits.max_score_items:
            raise InvalidArgument(
                "items", f"{len(items)} items, at most {self.limits.max_score_items}"
            )
        if not math.isfinite(ppl_threshold) or ppl_threshold < 0:
            raise InvalidArgument("ppl_threshold", f"{ppl_threshold} must be >= 0")
        most = min(self.limits.max_score_top_k, host.info.vocab_size)
        if not 0 <= top_k <= most:
            raise InvalidArgument("top_k", f"{top_k} outside [0, {most}]")
        tokenizer = host.engine.tokenizer
        inputs = []
        context = host.info.context_length
        for i, item in enumerate(items):
            if not item.completion:
                raise InvalidArgument(f"items[{i}].completion", "empty completion")
            # Checked once, with the completion's length; then tokenized off the loop.
            self._check_prompt(host, item.prompt, f"items[{i}]", len(item.completion))
            prompt_ids = await self._encode_off_loop(host, item.prompt, f"items[{i}].prompt",
                                                     checked=True)
            completion_ids = await self._encode_completion(host, item.completion)
            if len(prompt_ids) + len(completion_ids) > context:
                raise InvalidArgument(
                    f"items[{i}]",
                    f"prompt + completion = {len(prompt_ids) + len(completion_ids)} tokens, "
                    f"over the context length {context}",
                )
            inputs.append(ScoreInput(prompt_ids, completion_ids))
        if top_k:
            self._check_top_k_reply(inputs, top_k)
        keys = [(tuple(i.prompt_ids), tuple(i.completion_ids)) for i in inputs]
        cache = host.score_cache
        # The cache keeps logprobs only (top-k rows would be k times its memory): a
        # top-k request computes every item.
        missing = [k for k, key in enumerate(keys) if top_k or key not in cache]
        tokens = sum(len(inputs[k].prompt_ids) + len(inputs[k].completion_ids) for k in missing)
        # Admission counts a top-k item like any other: the forward pass is the work
        # (top-k adds a sort per position, see benchmarks/score_topk.py) and the rows'
        # memory is bounded by max_top_k_reply_bytes per request.
        with host.admit(len(missing), tokens):
            computed = (await host.engine.score([inputs[k] for k in missing], top_k=top_k)
                        if missing else [])
        fresh = dict(zip(missing, computed, strict=True))
        all_logprobs = [fresh[k].logprobs if k in fresh else cache[key]
                        for k, key in enumerate(keys)]
        tops = [fresh[k].top if k in fresh else None for k in range(len(keys))]
        for k, key in enumerate(keys):  # most recently used last; oldest evicted
            cache[key] = all_logprobs[k]
            cache.move_to_end(key)
        while len(cache) > self.limits.score_cache_items:
            cache.popitem(last=False)
        results = []
        for inp, logprobs, top in zip(inputs, all_logprobs, tops, strict=True):
            nll_sum, mean, ppl, above = summarize_logprobs(logprobs, ppl_threshold)
            results.append(
                ScoreResult(
                    token_ids=tuple(inp.completion_ids),
                    logprobs=tuple(logprobs),
                    tokens=tuple(tokenizer.token_strings(inp.completion_ids))
                    if return_tokens
                    else (),
                    nll_sum=nll_sum,
                    num_tokens=len(logprobs),
                    mean_nll=mean,
                    perplexity=ppl,
                    frac_above_threshold=above,
                    prompt_tokens=len(inp.prompt_ids),
                    top_logprobs=top,
                )
            )
        return results, host

    def _check_top_k_reply(self, inputs: Sequence[ScoreInput], top_k: int) -> None:
        """Refuse a top-k request whose reply would outgrow the bound (before any work)."""
        tokens = sum(len(i.completion_ids) for i in inputs)
        size = tokens * (8 * top_k + 4)  # int32 id + float32 logprob per cell, float32 tail
        bound = self.limits.max_top_k_reply_bytes
        if size > bound:
            raise ResourceExhausted(
                f"top_k: {top_k} x {tokens} completion tokens make a reply of about "
                f"{size / 2**20:.1f} MiB, over the {bound / 2**20:.0f} MiB bound; split the "
                "request or lower top_k"
            )

    # ------------------------------------------------------------ adapters

    async def load_adapter(
        self, base_model: str, name: str, path: str, replace: bool = False
    ) -> AdapterInfo:
        """Serve the LoRA adapter at ``path`` on ``base_model`` as ``name``.

        The same content under the same name again is a no-op (a retried load is safe);
        other content under a loaded name is AlreadyExists unless ``replace``, which
        swaps the weights: requests already admitted finish under the old ones.
        """
        check_name(name)
        if name in self.hosts:
            raise AlreadyExists(f"name: {name!r} is a served model; choose another name")
        base_name = base_model or self.default
        base = self.hosts.get(base_name)
        if base is None:
            if base_name in self.adapters:
                raise InvalidArgument(
                    "base_model", f"{base_name!r} is an adapter; name the served model it is "
                    f"of ({self.adapters[base_name].base.name!r})")
            raise InvalidArgument(
                "base_model", f"unknown model {clip(base_name)!r}; serving {sorted(self.hosts)}"
            )
        base = self.host(base_name)  # serving?
        settings = getattr(base.engine, "config", None)
        max_adapters = settings.max_adapters if settings is not None else 0
        if max_adapters <= 0:
            raise InvalidArgument(
                "base_model", f"model {base_name!r} serves no adapters (max_adapters=0)"
            )
        spec = await asyncio.to_thread(
            read_adapter, path, name=name, base_model=base_name,
            base_dir=base.info.source, max_rank=settings.max_lora_rank,
        )
        async with self._adapter_lock:
            current = self.adapters.get(name)
            on_base = [a for a in self.adapters.values() if a.base is base]
            if current is not None:
                if current.base is not base:
                    raise InvalidArgument(
                        "base_model", f"adapter {name!r} is loaded on {current.base.name!r}; "
                        f"unload it before loading it on {base_name!r}")
                if current.spec.revision == spec.revision:
                    return current.describe()
                if not replace:
                    raise AlreadyExists(
                        f"name: adapter {name!r} is loaded with other weights (revision "
                        f"{current.spec.revision}); pass replace=true to swap them")
            elif len(on_base) >= max_adapters:
                raise ResourceExhausted(
                    f"model {base_name!r} has {len(on_base)} adapters loaded (max_adapters="
                    f"{max_adapters}); unload one first")
            # A retired version holds engine memory until its requests finish: at most
            # max_adapters of them per base, beyond that a load waits (retry later).
            retired = sum(1 for a in self._retired if a.base is base)
            if retired >= max_adapters:
                raise ResourceExhausted(
                    f"model {base_name!r} still runs requests under {retired} replaced "
                    "adapter versions; retry when they finish")
            key = f"a{next(self._adapter_keys)}"
            await base.engine.load_adapter(EngineAdapter(key, spec.path, spec.rank))
            host = AdapterHost(base, spec, key, on_idle=self._release_soon)
            self.adapters[name] = host
            self._unloaded.pop(name, None)
            if current is not None:
                await self._retire(current)
            log.info("adapter %r (rank %d, %s) loaded on %r as %s%s", name, spec.rank,
                     spec.path, base_name, key, " (replaced)" if current else "")
            return host.describe(replaced=current is not None)

    async def unload_adapter(self, name: str) -> AdapterInfo:
        """Stop serving adapter ``name``: later requests naming it get NotFound; those
        already admitted finish, then its weights are freed."""
        async with self._adapter_lock:
            host = self.adapters.pop(name, None)
            if host is None:
                if name in self.hosts:
                    raise InvalidArgument("name", f"{name!r} is a served model, not an adapter")
                raise NotFound(
                    f"name: no adapter {clip(name)!r} is loaded; loaded: {sorted(self.adapters)}"
                )
            self._unloaded[name] = None
            while len(self._unloaded) > 1024:
                self._unloaded.popitem(last=False)
            await self._retire(host)
            log.info("adapter %r unloaded", name)
            return host.describe()

    async def _retire(self, host: AdapterHost) -> None:
        """No new requests under this version; free it now if idle, else when idle."""
        host.retired = True
        if host.in_flight == 0:
            host.released = True
            await self._release(host)
        else:
            self._retired.add(host)

    def _release_soon(self, host: AdapterHost) -> None:
        """A retired version's last request finished (called on the event loop)."""
        if host.released:
            return
        host.released = True
        task = asyncio.get_running_loop().create_task(self._release(host))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, host: AdapterHost) -> None:
        try:
            await host.base.engine.unload_adapter(host.key)
        except Exception:  # the engine keeps serving; the version's memory may linger
            log.exception("freeing adapter %r (%s) failed", host.name, host.key)
        finally:
            self._retired.discard(host)

    # ------------------------------------------------------------ text and token access

    def render_prompt(self, model: str, messages: Sequence[dict[str, str]]) -> str:
        """Chat messages as ``model`` reads them (its chat template, ending at the
        generation prompt), for callers that continue a prompt as raw text."""
        return self.host(model).engine.tokenizer.chat_text(messages)

    def tokenizer(self, model: str) -> PromptTokenizer:
        """The tokenizer every prompt and completion of ``model`` goes through, for
        callers that cut text by the model's tokens (e.g. half a response)."""
        return self.host(model).engine.tokenizer

    async def score_tokens(self, model: str, items: Sequence[ScoreInput]) -> list[list[float]]:
        """Logprob of every completion token of token-id (prompt, completion) pairs, for
        callers that cut their own token windows (rolling-window perplexity)."""
        host = self.host(model)
        tokens = sum(len(i.prompt_ids) + len(i.completion_ids) for i in items)
        with host.admit(len(items), tokens):
            return [out.logprobs for out in await host.engine.score(list(items))]
