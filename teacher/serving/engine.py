"""The engine protocol: what the teacher service needs from an inference engine.

An engine serves one model. It generates token ids for tokenized prompts,
scores completions teacher-forced, tokenizes, describes itself and aborts
requests. Text concerns that must behave the same on every engine (chat
templates, incremental detokenization, stop sequences, time limits, ``n``
samples) live in the service, so engines agree by construction.

Engines are chosen by name (``load_engine``); each lives in its own module under
``teacher.serving.engines`` and imports its heavy dependencies (torch, vLLM) itself.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, runtime_checkable

from teacher.core.topk import TopK
from teacher.serving.sampling import SamplingParams
from teacher.serving.tokenization import PromptTokenizer

# "error": the engine failed this one request (it keeps serving the others).
FinishReason = Literal["eos", "length", "abort", "error"]


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    prompt_ids: Sequence[int]
    sampling: SamplingParams  # one sample's settings: see SamplingParams.for_sample
    adapter: str = ""  # the EngineAdapter.key to generate under; "" = the base model

    def __post_init__(self) -> None:
        s = self.sampling
        if s.n != 1 or s.seed is None or s.max_new_tokens < 1:
            raise ValueError(
                "an engine request samples once with a seed and a token budget: "
                "pass SamplingParams.for_sample(index, default_max_new_tokens)"
            )


@dataclass(frozen=True)
class TokenStep:
    """One generated token, with its logprob and alternatives when asked for."""

    token_id: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class EngineOutput:
    """New tokens since the last output; ``finish`` is set on the last one."""

    tokens: tuple[TokenStep, ...]
    finish: FinishReason | None = None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    revision: str
    engine: str
    engine_version: str
    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    dtype: str
    device: str


@dataclass
class EngineLoad:
    running: int = 0
    waiting: int = 0


@dataclass(frozen=True)
class EngineAdapter:
    """A LoRA adapter as an engine loads it: ``key`` is the engine's name for this
    version of its weights (unique per load; letters and digits only), ``path`` a
    checked adapter directory (``teacher.serving.adapters.read_adapter``)."""

    key: str
    path: str
    rank: int


@dataclass(frozen=True)
class ScoreInput:
    prompt_ids: Sequence[int]
    completion_ids: Sequence[int]


@dataclass(frozen=True)
class ScoreOutput:
    """One scored completion: the logprob of each completion token and, when
    ``score`` was asked for ``top_k``, the model's top-k rows at those positions
    (row t = the distribution that predicted completion token t)."""

    logprobs: list[float]
    top: TopK | None = None


# The batch-size knob of each engine: EngineSettings.max_batch_size is passed as it.
BATCH_SIZE_OPTION = {"hf": "max_batch_size", "vllm": "max_num_seqs"}


@dataclass
class EngineSettings:
    """How models are served: the one engine-settings type (the server's flags, an eval
    suite's ``engine`` section, an in-process teacher's settings).

    ``name`` picks the engine ("" = :func:`default_engine`); ``options`` are that
    engine's own settings (see its module). ``max_batch_size`` (None = the engine's
    default) is given to each engine under its own option name by :meth:`resolved`.
    """

    name: str = ""  # "hf" or "vllm"; "" = vllm where installed, else hf
    dtype: str = "auto"  # "auto": bf16 on CUDA, fp32 on CPU
    device: str = "auto"
    max_model_len: int = 2048
    seed: int = 0
    max_batch_size: int | None = None
    options: dict = field(default_factory=dict)
    # Runtime LoRA adapters per model (LoadAdapter): at most this many loaded at once
    # (0 = none; vLLM then runs without its LoRA layers), each of rank <= max_lora_rank
    # (vLLM allows 1, 8, 16, 32, 64, 128, 256, 320, 512).
    max_adapters: int = 0
    max_lora_rank: int = 16

    def resolved(self) -> EngineSettings:
        """The engine named, and ``max_batch_size`` moved into ``options`` under the
        engine's name for it (an explicit option of that name wins)."""
        name = self.name or default_engine()
        options = dict(self.options)
        if self.max_batch_size is not None and name in BATCH_SIZE_OPTION:
            options = {BATCH_SIZE_OPTION[name]: self.max_batch_size, **options}
        return replace(self, name=name, max_batch_size=None, options=options)


@runtime_checkable
class Engine(Protocol):
    """What the service calls. All methods are safe to call from the event loop."""

    tokenizer: PromptTokenizer
    config: EngineSettings  # as constructed (max_adapters, max_lora_rank: adapter bounds)

    async def start(self) -> None:
        """Load the model; afterwards ``info()`` is valid and requests are served."""

    def info(self) -> ModelInfo: ...

    def load(self) -> EngineLoad: ...

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Stream new tokens. Breaking out of the iterator aborts the request."""

    async def score(
        self, items: Sequence[ScoreInput], top_k: int = 0, adapter: str = ""
    ) -> list[ScoreOutput]:
        """Logprob of every completion token given the prompt and earlier tokens (under
        the loaded adapter ``adapter`` when given); with ``top_k`` > 0 also the ``top_k``
        most likely tokens at each of those positions, sorted, and the log of the mass
        outside them (the service has checked ``top_k`` against its limit; an engine
        that cannot give that many raises InvalidArgument naming ``top_k``)."""

    async def load_adapter(self, adapter: EngineAdapter) -> None:
        """Make ``adapter.key`` usable in requests; a bad adapter is InvalidArgument."""

    async def unload_adapter(self, key: str) -> None:
        """Free an adapter no request uses any more (the service makes sure of that)."""

    async def abort(self, request_id: str) -> None:
        """Stop a running request and free its slot; unknown ids are ignored."""

    def on_failure(self, callback: Callable[[BaseException], None]) -> None:
        """Call ``callback`` once when the engine stops serving by itself (a background
        task died beyond restart, the device failed): the model turns NOT_SERVING.
        Engines run background tasks under ``teacher.serving.supervision.Supervisor``."""

    async def shutdown(self) -> None: ...


ENGINES = {
    "hf": "teacher.serving.engines.hf:HFEngine",
    "vllm": "teacher.serving.engines.vllm:VLLMEngine",
}


def available_engines() -> list[str]:
    return sorted(ENGINES)


def default_engine() -> str:
    """vLLM wherever it is installed, else transformers."""
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def load_engine(settings: EngineSettings, model: str, name: str = "", revision: str = "") -> Engine:
    """The engine ``settings`` name for ``model`` (a prepared local directory, see
    ``teacher.core.models.resolve``), served as ``name``; imports only that engine."""
    settings = settings.resolved()
    if settings.name not in ENGINES:
        raise ValueError(
            f"unknown engine {settings.name!r}; choose one of {available_engines()}"
        )
    module_name, class_name = ENGINES[settings.name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)(settings, model, name=name, revision=revision)
