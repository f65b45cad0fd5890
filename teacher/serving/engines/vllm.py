"""The vLLM engine: the protocol of ``teacher.serving.engine`` on vLLM's ``AsyncLLM``.

vLLM is imported only here, inside ``start()``, so that importing this module
is cheap and the CPU environment defaults can be set before vLLM reads them.

Facts about vLLM 0.32 this module relies on (checked against its source):

* ``AsyncLLM`` runs the model in an EngineCore process. On CPU vLLM forces the
  ``spawn`` start method, so the program's entry point must sit under
  ``if __name__ == "__main__":`` (pytest's entry point already does).
* ``logprobs_mode="raw_logprobs"`` (vLLM's default, set explicitly here) is a
  log_softmax of the model's logits before temperature, penalties, top-k/p and
  min-tokens masking: the raw logprob the protocol asks for.
* ``top_k=0`` means off (``-1`` is accepted too); ``temperature=0`` is greedy.
* ``detokenize=False`` is supported; the service detokenizes.
* Stop on EOS: ``ignore_eos=False`` (the default) stops on the tokenizer's EOS
  and vLLM adds the ``generation_config.json`` ``eos_token_id`` entries to
  ``stop_token_ids`` itself. The EOS token is included in the output ids.
* ``AsyncLLM.generate`` aborts its request when the generator is closed or the
  task cancelled; ``VLLMEngine.generate`` also aborts explicitly.
* vLLM appends a random suffix to each request id internally; aborting by the
  id we passed (the "external" id) still reaches the request.
* Runtime LoRA: with ``enable_lora`` (on when ``EngineSettings.max_adapters`` > 0),
  ``add_lora(LoRARequest(name, int_id, path))`` loads an adapter into the engine
  core's CPU cache (a bad one fails that call only), a request passing the same
  ``LoRARequest`` runs under it, ``remove_lora(int_id)`` frees it. ``max_loras`` is
  how many distinct adapters one batch may hold (more wait); ``max_cpu_loras`` how
  many stay loaded: twice ``max_adapters`` here, room for a replaced version per
  adapter while its requests finish (the service bounds both).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from teacher.core.topk import TopK
from teacher.serving.engine import (
    EngineAdapter,
    EngineLoad,
    EngineOutput,
    EngineRequest,
    EngineSettings,
    FinishReason,
    ModelInfo,
    ScoreInput,
    ScoreOutput,
    TokenStep,
)
from teacher.serving.errors import EngineUnavailable, InvalidArgument, TeacherError
from teacher.serving.sampling import SamplingParams
from teacher.serving.supervision import FailureCallback, Supervisor
from teacher.serving.tokenization import PromptTokenizer

log = logging.getLogger(__name__)

# Defaults for vLLM on CPU (see /work/shared/MODELS.md): use every core for the
# model (the default reserves one of two for the scheduler, halving speed) and
# a KV cache that fits small machines.
_CPU_ENV_DEFAULTS = {
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "VLLM_CPU_KVCACHE_SPACE": "2",
}

# "error" is vLLM's request-level failure (e.g. a KV load): that request ends, the
# engine keeps serving the others.
_FINISH: dict[str, FinishReason] = {
    "stop": "eos", "length": "length", "abort": "abort", "error": "error",
}

_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM 0.32 accepts as max_lora_rank


@dataclass
class _Flight:
    request_id: str
    started: bool = False  # an output arrived: running rather than waiting


def _wants_cpu(config: EngineSettings) -> bool:
    if config.device == "cpu":
        return True
    if config.device == "auto":
        import torch

        return not torch.cuda.is_available()
    return False


class VLLMEngine:
    """Serves one model with vLLM's asynchronous engine."""

    tokenizer: PromptTokenizer

    def __init__(self, config: EngineSettings, model: str, name: str = "", revision: str = ""):
        # No heavy work here: the service builds engines before its event loop runs.
        self.config = config
        self.source = model  # a prepared local directory
        self.served_name = name
        self.revision = revision
        self._llm: Any = None  # vllm.v1.engine.async_llm.AsyncLLM once started
        self._vllm: Any = None  # the vllm module
        self._info: ModelInfo | None = None
        self._closed = False
        # In-flight requests (generate and score): vLLM request id and whether any
        # output arrived yet, keyed by a private counter so a reused request id
        # cannot confuse the count.
        self._inflight: dict[int, _Flight] = {}
        self._keys = itertools.count()
        self._loras: dict[str, Any] = {}  # EngineAdapter.key -> its vllm LoRARequest
        self._lora_ids = itertools.count(1)
        # vLLM's output handler is the one background task: if it ends (the engine
        # core died, or a bug in it) every stream stalls or fails, so its end is
        # this engine's failure (logged with traceback, NOT_SERVING, exit).
        self._supervisor = Supervisor("vLLM engine")

    def on_failure(self, callback: FailureCallback) -> None:
        self._supervisor.on_failure(callback)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self._llm is not None:
            return
        cfg = self.config
        if _wants_cpu(cfg):
            for key, value in _CPU_ENV_DEFAULTS.items():
                os.environ.setdefault(key, value)

        import vllm
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        device = "cpu" if current_platform.is_cpu() else current_platform.device_type
        if cfg.device not in ("auto", device):
            raise EngineUnavailable(
                f"vLLM here runs on {device!r}, but device {cfg.device!r} was asked for"
            )
        dtype = cfg.dtype
        if dtype == "auto":
            # bf16 is emulated (slow) on most CPUs; fp32 there, bf16 on accelerators.
            dtype = "float32" if device == "cpu" else "bfloat16"

        args: dict[str, Any] = {
            "model": self.source,
            "tokenizer": self.source,
            "dtype": dtype,
            "max_model_len": cfg.max_model_len,
            "seed": cfg.seed,
            # The protocol's logprobs are untempered, unfiltered log_softmax values.
            "logprobs_mode": "raw_logprobs",
            "disable_log_stats": True,
        }
        if device == "cpu":
            args["enforce_eager"] = True  # graph capture/compile is slow and unneeded on CPU
            # A prompt whose prefill is split over steps makes vLLM rewind its seeded
            # generator, which CPU generators cannot do ("CPU Generator does not use
            # offset": the EngineCore dies). Whole prompts only, with a step budget that
            # always holds the longest one.
            args["enable_chunked_prefill"] = False
            args["max_num_batched_tokens"] = max(cfg.max_model_len, 8192)
        if cfg.max_adapters > 0:
            rank = next((r for r in _LORA_RANKS if r >= cfg.max_lora_rank), cfg.max_lora_rank)
            args.update(enable_lora=True, max_loras=cfg.max_adapters, max_lora_rank=rank,
                        max_cpu_loras=2 * cfg.max_adapters)
        args.update(cfg.options)  # e.g. gpu_memory_utilization

        try:
            engine_args = AsyncEngineArgs(**args)
        except TypeError as e:  # a misspelt key in config.options
            raise ValueError(f"bad vLLM engine option in {sorted(cfg.options)}: {e}") from e
        try:
            # Construction spawns the EngineCore process and loads the model
            # (tens of seconds); a thread keeps the event loop serving meanwhile.
            # AsyncLLM supports being built outside the loop: its socket and
            # output tasks attach to the loop on first use.
            # No local variable may hold the AsyncLLM: vLLM keeps tracebacks of
            # some failed optional imports whose frames chain up to this one, so
            # a local would keep the engine alive past shutdown() (its __del__
            # then fails at interpreter exit).
            self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, engine_args)
        except Exception as e:
            raise EngineUnavailable(f"vLLM failed to start for {self.source}: {e}") from e
        # Start the output handler now rather than on the first request, so an
        # engine-core failure is noticed even while idle.
        if hasattr(self._llm, "_run_output_handler"):
            self._llm._run_output_handler()
        handler = getattr(self._llm, "output_handler", None)
        if isinstance(handler, asyncio.Task):
            self._supervisor.watch("output-handler", handler)
        self._vllm = vllm
        try:
            self.tokenizer = await asyncio.to_thread(PromptTokenizer.from_pretrained, self.source)
            self._info = self._describe(device)
        except BaseException:
            await self.shutdown()
            raise
        log.info("vLLM %s serving %s (%s on %s)", vllm.__version__, self.source, dtype, device)

    def _describe(self, device: str) -> ModelInfo:
        cfg = self.config
        model_config = self._llm.model_config
        # Everything vLLM stops on: the tokenizer's EOS and generation_config's
        # eos_token_id (an int or a list), read the same way vLLM reads it.
        eos: list[int] = []
        if self.tokenizer.hf.eos_token_id is not None:
            eos.append(int(self.tokenizer.hf.eos_token_id))
        gen_eos = model_config.try_get_generation_config().get("eos_token_id")
        if gen_eos is not None:
            eos.extend(int(i) for i in ([gen_eos] if isinstance(gen_eos, int) else gen_eos))
        return ModelInfo(
            name=self.served_name or Path(self.source).name,
            source=self.source,
            revision=self.revision,
            engine="vllm",
            engine_version=self._vllm.__version__,
            # vLLM already caps the model's own limit by max_model_len.
            context_length=min(int(model_config.max_model_len), cfg.max_model_len),
            vocab_size=int(model_config.get_vocab_size()),
            eos_token_ids=tuple(dict.fromkeys(eos)),
            dtype=str(model_config.dtype).removeprefix("torch."),
            device=device,
        )

    def info(self) -> ModelInfo:
        if self._info is None:
            raise EngineUnavailable("the vLLM engine has not been started")
        return self._info

    def load(self) -> EngineLoad:
        running = sum(1 for flight in self._inflight.values() if flight.started)
        return EngineLoad(running=running, waiting=len(self._inflight) - running)

    async def shutdown(self) -> None:
        self._closed = True
        self._supervisor.stopping()  # an orderly stop is not a failure
        llm, self._llm = self._llm, None
        if llm is None:
            return
        # End open streams with finish="abort" rather than leaving them waiting.
        if self._inflight and not llm.errored:
            ids = sorted({flight.request_id for flight in self._inflight.values()})
            await _quietly(llm.abort(ids))
        # Stop the output handler first: it would otherwise see the engine core
        # go away and log an EngineDeadError for an orderly shutdown.
        handler = getattr(llm, "output_handler", None)
        if handler is not None:
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
        # Blocks while the EngineCore process exits, so off the event loop.
        await asyncio.to_thread(llm.shutdown)

    # -- requests ------------------------------------------------------------

    def _engine(self) -> Any:
        if self._llm is None:
            state = "shut down" if self._closed else "not started"
            raise EngineUnavailable(f"the vLLM engine is {state}")
        if self._llm.errored:
            error = EngineUnavailable("the vLLM engine core has died")
            self._supervisor.fail(error)
            raise error
        return self._llm

    def _sampling_params(self, s: SamplingParams) -> Any:
        from vllm.sampling_params import RequestOutputKind
        from vllm.sampling_params import SamplingParams as VLLMSamplingParams

        want_logprobs = s.logprobs or s.top_logprobs > 0
        return VLLMSamplingParams(
            temperature=0.0 if s.greedy else s.temperature,
            top_p=s.top_p,
            top_k=max(s.top_k, 0),  # 0 = off in vLLM 0.32 (as is -1)
            seed=None if s.greedy else s.seed,
            max_tokens=s.max_new_tokens,
            min_tokens=s.min_new_tokens,  # vLLM masks EOS/stop ids until then
            # vLLM always adds the sampled token's logprob to the top-k it returns.
            logprobs=max(s.top_logprobs, 0) if want_logprobs else None,
            output_kind=RequestOutputKind.DELTA,
            detokenize=False,  # the service detokenizes (and applies stop strings)
        )

    def _raise_translated(self, e: Exception) -> NoReturn:
        """Re-raise a vLLM exception as the service's own."""
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        if isinstance(e, TeacherError):
            raise e
        if isinstance(e, EngineDeadError):
            error = EngineUnavailable(f"the vLLM engine core died: {e}")
            self._supervisor.fail(error)
            raise error from e
        if isinstance(e, EngineGenerateError):
            cause = e.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause else str(e)
            raise EngineUnavailable(f"vLLM failed the request: {detail}") from e
        if isinstance(e, VLLMClientError):  # e.g. a prompt longer than max_model_len
            raise InvalidArgument(getattr(e, "parameter", None) or "request", str(e)) from e
        raise EngineUnavailable(f"vLLM failed: {type(e).__name__}: {e}") from e

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        llm = self._engine()
        params = self._sampling_params(request.sampling)
        top_n = max(request.sampling.top_logprobs, 0)
        key = next(self._keys)
        self._inflight[key] = flight = _Flight(request.request_id)
        stream = None
        finished = False
        try:
            try:
                prompt = _engine_input(llm, request.prompt_ids)
                stream = llm.generate(prompt, params, request.request_id,
                                      lora_request=self._lora(request.adapter))
                async for out in stream:
                    flight.started = True
                    completion = out.outputs[0]
                    finish = None
                    if out.finished:
                        finished = True
                        finish = self._finish_reason(completion.finish_reason)
                    steps = _token_steps(completion.token_ids, completion.logprobs, top_n)
                    if steps or finish is not None:
                        yield EngineOutput(tokens=steps, finish=finish)
            except Exception as e:
                self._raise_translated(e)
        finally:
            self._inflight.pop(key, None)
            if not finished:
                # The consumer stopped early (aclose/GeneratorExit, or task
                # cancellation) or the request failed. Closing vLLM's generator
                # aborts its request; the explicit abort covers a stream that
                # never started.
                if stream is not None:
                    await _quietly(stream.aclose())
                await _quietly(self.abort(request.request_id))

    @staticmethod
    def _finish_reason(reason: str | None) -> FinishReason:
        if reason in _FINISH:
            return _FINISH[reason]
        raise EngineUnavailable(f"vLLM ended the request with {reason!r}")

    async def score(
        self, items: Sequence[ScoreInput], top_k: int = 0, adapter: str = ""
    ) -> list[ScoreOutput]:
        llm = self._engine()
        lora = self._lora(adapter)
        max_len = self.info().context_length
        max_logprobs = int(llm.model_config.max_logprobs)
        if max_logprobs >= 0 and top_k > max_logprobs:
            raise InvalidArgument(
                "top_k", f"{top_k} > {max_logprobs}, vLLM's max_logprobs for this model "
                "(raise it with the engine option max_logprobs)"
            )
        for i, item in enumerate(items):
            if item.completion_ids and not item.prompt_ids:
                raise InvalidArgument(f"items[{i}].prompt", "a scored prompt must not be empty")
            # vLLM needs room for the one token it generates after the prompt.
            if len(item.prompt_ids) + len(item.completion_ids) >= max_len:
                raise InvalidArgument(
                    f"items[{i}]", f"prompt + completion must be under {max_len} tokens"
                )
        # Submitted together so vLLM schedules them in the same batches.
        return list(await asyncio.gather(*(self._score_one(llm, item, top_k, lora)
                                           for item in items)))

    async def _score_one(self, llm: Any, item: ScoreInput, top_k: int,
                         lora: Any = None) -> ScoreOutput:
        from vllm.sampling_params import RequestOutputKind
        from vllm.sampling_params import SamplingParams as VLLMSamplingParams

        completion = [int(t) for t in item.completion_ids]
        if not completion:
            return ScoreOutput([], _top_from_flat([], top_k))
        ids = [int(t) for t in item.prompt_ids] + completion
        params = VLLMSamplingParams(
            max_tokens=1,
            temperature=0.0,
            # Per prompt position: the actual token's logprob, then the top_k (if any).
            prompt_logprobs=top_k,
            # Flat lists rather than a dict of Logprob objects per position.
            flat_logprobs=True,
            output_kind=RequestOutputKind.FINAL_ONLY,
            detokenize=False,
        )
        request_id = f"score-{uuid.uuid4().hex}"
        key = next(self._keys)
        self._inflight[key] = flight = _Flight(request_id)
        final = None
        try:
            async for out in llm.generate(_engine_input(llm, ids), params, request_id,
                                          lora_request=lora):
                flight.started = True
                final = out
        except Exception as e:
            self._raise_translated(e)
        finally:
            self._inflight.pop(key, None)
        if final is None or final.prompt_logprobs is None:
            raise EngineUnavailable("vLLM returned no prompt logprobs")
        # Position i scores token i given tokens < i (position 0 is empty).
        flat = final.prompt_logprobs
        start = len(ids) - len(completion)
        rows = []
        for j, token in enumerate(completion):
            at, end = flat.start_indices[start + j], flat.end_indices[start + j]
            if end - at != 1 + top_k or flat.token_ids[at] != token:
                raise EngineUnavailable(
                    f"vLLM returned {end - at} prompt logprobs at position {start + j} "
                    f"(token {flat.token_ids[at] if end > at else None}, expected {token} "
                    f"and {top_k} more)"
                )
            rows.append((at, end))
        logprobs = [float(flat.logprobs[at]) for at, _ in rows]
        top = _top_from_flat([(flat.token_ids[at + 1:end], flat.logprobs[at + 1:end])
                              for at, end in rows], top_k)
        return ScoreOutput(logprobs, top)

    # -- adapters ------------------------------------------------------------

    def _lora(self, key: str) -> Any:
        """The LoRARequest of a loaded adapter; None for the base model."""
        if not key:
            return None
        lora = self._loras.get(key)
        if lora is None:
            raise EngineUnavailable(f"adapter {key!r} is not loaded in this engine")
        return lora

    async def load_adapter(self, adapter: EngineAdapter) -> None:
        from vllm.lora.request import LoRARequest

        llm = self._engine()
        if self.config.max_adapters <= 0:
            raise InvalidArgument("base_model", "this vLLM engine runs without LoRA")
        lora = LoRARequest(adapter.key, next(self._lora_ids), adapter.path)
        try:
            # Eagerly, so a bad adapter fails here, and the weights are read now: a
            # later rewrite of the directory does not change this version.
            await llm.add_lora(lora)
        except Exception as e:
            if llm.errored:
                self._raise_translated(e)
            raise InvalidArgument("path", f"vLLM could not load the adapter: {e}") from e
        self._loras[adapter.key] = lora

    async def unload_adapter(self, key: str) -> None:
        lora = self._loras.pop(key, None)
        llm = self._llm
        if lora is not None and llm is not None and not llm.errored:
            await llm.remove_lora(lora.lora_int_id)

    async def abort(self, request_id: str) -> None:
        llm = self._llm
        if llm is not None and not llm.errored:
            # Aborting an unknown or finished id is a no-op in vLLM.
            await llm.abort(request_id)


def _top_from_flat(rows: Sequence[tuple[Sequence[int], Sequence[float]]], k: int
                   ) -> TopK | None:
    """TopK from vLLM's per-position top-k (ids, logprobs), already in rank order.

    vLLM returns only the top k, so the mass outside them is log(1 - sum(exp(row))),
    in float64; mass below float32's resolution of a probability sum (1e-7) cannot be
    told from rounding and is floored there (hf computes the tail exactly)."""
    if k <= 0:
        return None
    ids = np.asarray([r[0] for r in rows], np.int32).reshape(len(rows), k)
    lps = np.asarray([r[1] for r in rows], np.float64).reshape(len(rows), k)
    rest = 1.0 - np.exp(lps).sum(axis=1)
    tail = np.log(np.maximum(rest, _MIN_TAIL_MASS))
    return TopK(ids, lps.astype(np.float32), tail.astype(np.float32))


_MIN_TAIL_MASS = 1e-7


def _engine_input(llm: Any, prompt_ids: Sequence[int]) -> Any:
    """The token prompt as vLLM's engine input.

    vLLM 0.32 deprecates handing ``AsyncLLM.generate`` an unrendered prompt; its
    renderer turns a ``TokensPrompt`` into an engine input (no tokenization,
    but the same length checks).
    """
    from vllm.inputs import TokensPrompt

    prompt = TokensPrompt(prompt_token_ids=[int(t) for t in prompt_ids])
    renderer = getattr(llm, "renderer", None)
    if renderer is None:
        return prompt
    (rendered,) = renderer.render_cmpl([prompt])
    return rendered


def _token_steps(token_ids: Sequence[int], logprobs: Any, top_n: int) -> tuple[TokenStep, ...]:
    """One TokenStep per new token; ``logprobs`` is vLLM's per-position dicts or None."""
    if logprobs is None:
        return tuple(TokenStep(int(t)) for t in token_ids)
    steps = []
    for token_id, position in zip(token_ids, logprobs, strict=True):
        # Each position holds the top-n and the sampled token (which may lie
        # outside the top-n, making n+1 entries): keep the n most likely.
        ranked = sorted(
            ((int(t), float(lp.logprob)) for t, lp in position.items()), key=lambda p: -p[1]
        )
        steps.append(
            TokenStep(
                token_id=int(token_id),
                logprob=float(position[token_id].logprob),
                top=tuple(ranked[:top_n]),
            )
        )
    return tuple(steps)


_CLEANUP_TIMEOUT_S = 10.0


async def _quietly(awaitable: Any) -> None:
    """Best-effort, bounded clean-up: a failure or a stall here must neither mask the
    original exit nor hold the caller (a time limit, a cancelled stream) forever."""
    try:
        await asyncio.wait_for(awaitable, _CLEANUP_TIMEOUT_S)
    except Exception as e:  # TimeoutError included
        log.warning("vLLM clean-up step failed: %r", e)
