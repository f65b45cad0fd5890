"""The transformers engine: the fallback where vLLM is not installed, and a cross-check.

Concurrent requests are gathered by a micro-batcher into left-padded batches
under a size and token budget, then decoded step by step with the KV cache on
one worker thread, so the event loop never blocks on model work. Each sequence
samples with its own seeded generator: a seed gives the same tokens whatever
else shares the batch. Scoring is batched the same way.

Generation is continuously batched: sequences that arrive while a batch is
decoding join it between steps (their prompts prefilled, their KV cache merged
in), and finished sequences leave it at once, so a late request never waits
for a whole batch to finish.

Options (``EngineSettings.options``): ``max_batch_size`` (16), ``max_batch_tokens``
(8192: prompt + new tokens over the batch), ``batch_wait_ms`` (5),
``max_score_tokens`` (2048 completion tokens per scoring batch, bounding the
logits held in memory), ``continuous_batching`` (true; false = static batches),
``packed_prefill`` (true: prompts joining together run as one packed sequence
under a block-diagonal mask, no padding computed), ``prepack_lm_head`` (default
on for float32 on CPU: the output projection's weight is pre-packed for oneDNN,
which halves the largest matmul of a batched decoding step; costs one copy of
that weight).

LoRA adapters (``load_adapter``) are peft adapters of the served model: the first
one wraps it in a ``PeftModel`` (the last one unloaded unwraps it, so a model with
no adapters runs as before), and each forward names every row's adapter with
peft's mixed-batch ``adapter_names`` ("__base__" for the base), so requests under
different adapters and the base share batches. Prompts are packed together only
when they share one adapter (the packed sequence is one batch row). Loading and
unloading run on the worker thread between decoding steps, never during a forward.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from teacher.core.topk import TopK
from teacher.serving.engine import (
    EngineAdapter,
    EngineLoad,
    EngineOutput,
    EngineRequest,
    EngineSettings,
    ModelInfo,
    ScoreInput,
    ScoreOutput,
    TokenStep,
)
from teacher.serving.errors import EngineUnavailable, InvalidArgument
from teacher.serving.sampling import SamplingParams
from teacher.serving.supervision import FailureCallback, Fatal, Supervisor
from teacher.serving.tokenization import PromptTokenizer

log = logging.getLogger(__name__)

_DONE = object()  # sentinel closing a sequence's output queue
_MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth a special layout


@dataclass(eq=False)
class _Sequence:
    request: EngineRequest
    outputs: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    aborted: bool = False
    started: bool = False

    def emit(self, item: object) -> None:
        self.loop.call_soon_threadsafe(self.outputs.put_nowait, item)


@dataclass(eq=False)
class _ScoreJob:
    items: Sequence[ScoreInput]
    future: asyncio.Future
    top_k: int = 0
    results: list[ScoreOutput] = field(default_factory=list)
    adapter: str = ""


@dataclass(eq=False)
class _AdapterJob:
    """Load ``adapter`` (or, with ``unload``, free it) on the worker thread."""

    adapter: EngineAdapter
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    unload: bool = False

    def done(self, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if error is None:
                self.future.set_result(None)
            else:
                self.future.set_exception(error)

        self.loop.call_soon_threadsafe(settle)


@dataclass(eq=False)
class _Row:
    """One sequence in the running batch."""

    seq: _Sequence
    generator: torch.Generator
    count: int = 0  # tokens produced
    next_id: int = 0  # the token to feed at the next step


def _cost(seq: _Sequence) -> int:
    """What a sequence may occupy: its prompt plus its new tokens."""
    return len(seq.request.prompt_ids) + seq.request.sampling.max_new_tokens


class _PackedLinear(torch.nn.Module):
    """A bias-free Linear whose weight is also pre-packed for oneDNN (CPU), used for
    the few rows of a decoding step. MKL's plain matmul re-packs a [vocab, hidden]
    weight on every call; at batch 8 that makes the output projection a third of a
    step. Measured on 2 AVX2 cores, 0.5B model: 89 -> 49 ms per step at batch 8,
    33 -> 19 ms at batch 1. Many rows (scoring) are compute-bound: the plain weight."""

    packed_rows = 64

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight = linear.weight  # the model's own (tied or not), for many-row calls
        self.out_features = linear.out_features
        self.packed = linear.weight.detach().to_mkldnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] > self.packed_rows:
            return torch.nn.functional.linear(x, self.weight)
        y = torch._C._nn.mkldnn_linear(flat.contiguous().to_mkldnn(), self.packed, None)
        return y.to_dense().reshape(*x.shape[:-1], self.out_features)


def _prepack_lm_head(model: torch.nn.Module) -> bool:
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return False
    if not (torch.backends.mkldnn.is_available() and hasattr(torch._C._nn, "mkldnn_linear")):
        return False
    model.set_output_embeddings(_PackedLinear(head))
    return True


@dataclass(eq=False)
class _Running:
    """The batch being decoded: its rows, their KV cache (left-padded to one length),
    the attention mask over the cache and each row's last position."""

    rows: list[_Row]
    cache: object  # transformers DynamicCache
    mask: torch.Tensor  # [rows, cached tokens]: 0 = padding
    last_pos: torch.Tensor  # [rows]

    @property
    def can_merge(self) -> bool:
        """Only plain per-layer key/value caches can be padded and concatenated."""
        from transformers.cache_utils import DynamicLayer

        layers = getattr(self.cache, "layers", None)
        return bool(layers) and all(
            isinstance(layer, DynamicLayer) and not layer.is_sliding for layer in layers
        )

    def tokens(self) -> int:
        return sum(_cost(r.seq) for r in self.rows)

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows (in order); cut cache columns that are padding for all."""
        if len(indices) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in indices]
        if not self.rows:
            return
        index = torch.tensor(indices, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.last_pos = self.mask[index], self.last_pos[index]
        first = int(self.mask.any(0).int().argmax())
        if first > 0 and self.can_merge:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]
            self.mask = self.mask[:, first:]

    def merge(self, other: _Running) -> _Running:
        """This batch and ``other`` as one, each left-padded to the longer cache."""
        if not other.rows:
            return self
        if not self.rows:
            return other
        width = max(self.mask.shape[1], other.mask.shape[1])
        for part in (self, other):
            pad = width - part.mask.shape[1]
            if pad:
                for layer in part.cache.layers:
                    layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, pad, 0))
                    layer.values = torch.nn.functional.pad(layer.values, (0, 0, pad, 0))
                part.mask = torch.nn.functional.pad(part.mask, (pad, 0))
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([mine.keys, theirs.keys])
            mine.values = torch.cat([mine.values, theirs.values])
        self.rows += other.rows
        self.mask = torch.cat([self.mask, other.mask])
        self.last_pos = torch.cat([self.last_pos, other.last_pos])
        return self


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":  # bf16 is emulated (slow) on most CPUs
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }[dtype]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class HFEngine:
    """transformers + PyTorch behind the engine protocol."""

    name = "hf"

    def __init__(self, config: EngineSettings, model: str, name: str = "", revision: str = ""):
        self.config = config
        self.source = model  # a prepared local directory
        self.served_name = name
        self.revision = revision
        opts = config.options
        self.max_batch_size = int(opts.get("max_batch_size", 16))
        self.max_batch_tokens = int(opts.get("max_batch_tokens", 8192))
        self.batch_wait_s = float(opts.get("batch_wait_ms", 5)) / 1000
        self.max_score_tokens = int(opts.get("max_score_tokens", 2048))
        self.continuous = bool(opts.get("continuous_batching", True))
        self.packed_prefill = bool(opts.get("packed_prefill", True))
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.prepack = bool(
            opts.get("prepack_lm_head", self.device == "cpu" and self.dtype == torch.float32)
        )
        # One worker thread: the model is used by one batch at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine")
        # Waiting work, shared with the worker thread (which admits sequences into
        # the running batch between decoding steps): every access holds the lock.
        self._pending: deque[_Sequence | _ScoreJob] = deque()
        self._lock = threading.Lock()
        self._wakeup = asyncio.Event()
        self._running: dict[str, _Sequence] = {}
        self._scoring = 0  # items of the score job on the worker now
        self._adapter_jobs: deque[_AdapterJob] = deque()  # under the lock, like _pending
        self._adapters: set[str] = set()  # keys loaded (event-loop side)
        self._peft = None  # the PeftModel wrapping self.model while adapters are loaded
        self._supervisor = Supervisor("transformers engine")
        self._started = False
        self.model = None
        self.tokenizer: PromptTokenizer
        self._info: ModelInfo | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)
        self._wakeup = asyncio.Event()
        self._supervisor.start("scheduler", self._schedule)
        self._started = True

    def on_failure(self, callback: FailureCallback) -> None:
        self._supervisor.on_failure(callback)

    def _load(self) -> None:
        import transformers
        from transformers import AutoModelForCausalLM, GenerationConfig

        torch.manual_seed(self.config.seed)
        path = self.source
        self.tokenizer = PromptTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype)
        self.model = model.to(self.device).eval()
        if self.prepack and not _prepack_lm_head(self.model):
            log.info("prepack_lm_head: not applicable to this model; left as is")
        cfg = model.config
        # Packed prefill needs a custom 4D mask (sdpa/eager) and full attention in
        # every layer (its cache is re-laid out per sequence afterwards).
        layer_types = getattr(cfg, "layer_types", None) or ["full_attention"]
        self.packed_prefill = (
            self.packed_prefill
            and cfg._attn_implementation in ("sdpa", "eager")
            and all(t == "full_attention" for t in layer_types)
        )
        hf_tok = self.tokenizer.hf
        self.pad_id = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else 0
        eos = set()
        if hf_tok.eos_token_id is not None:
            eos.add(hf_tok.eos_token_id)
        try:
            gen_eos = GenerationConfig.from_pretrained(path).eos_token_id
        except OSError:
            gen_eos = None
        if gen_eos is not None:
            eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = frozenset(eos)
        context = getattr(cfg, "max_position_embeddings", None) or self.config.max_model_len
        self._info = ModelInfo(
            name=self.served_name or Path(path).name,
            source=str(path),
            revision=self.revision,
            engine="hf",
            engine_version=f"transformers {transformers.__version__}",
            context_length=min(int(context), self.config.max_model_len),
            vocab_size=int(cfg.vocab_size),
            eos_token_ids=tuple(sorted(self.eos_ids)),
            dtype=str(self.dtype).removeprefix("torch."),
            device=self.device,
        )

    def info(self) -> ModelInfo:
        assert self._info is not None, "engine not started"
        return self._info

    def load(self) -> EngineLoad:
        """Sequences (and score items) on the worker vs. waiting for it, each once."""
        with self._lock:
            scores = sum(len(p.items) for p in self._pending if isinstance(p, _ScoreJob))
            running = sum(s.started for s in self._running.values())
            return EngineLoad(
                running=running + self._scoring,
                waiting=len(self._running) - running + scores,
            )

    async def shutdown(self) -> None:
        await self._supervisor.stop()
        for seq in self._running.values():
            seq.aborted = True
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------ requests

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        self._check_alive()
        self._check_adapter(request.adapter)
        seq = _Sequence(request, asyncio.Queue(), asyncio.get_running_loop())
        self._running[request.request_id] = seq
        with self._lock:
            self._pending.append(seq)
        self._wakeup.set()
        try:
            while True:
                item = await seq.outputs.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise EngineUnavailable(f"transformers engine failed: {item}") from item
                yield item
                if item.finish is not None:
                    return
        finally:
            # Reached on normal end, on error, and when the consumer stops early.
            seq.aborted = True
            self._running.pop(request.request_id, None)
            with self._lock:
                if seq in self._pending:
                    self._pending.remove(seq)

    async def score(
        self, items: Sequence[ScoreInput], top_k: int = 0, adapter: str = ""
    ) -> list[ScoreOutput]:
        self._check_alive()
        self._check_adapter(adapter)
        job = _ScoreJob(items, asyncio.get_running_loop().create_future(), top_k,
                        adapter=adapter)
        with self._lock:
            self._pending.append(job)
        self._wakeup.set()
        return await job.future

    async def abort(self, request_id: str) -> None:
        seq = self._running.get(request_id)
        if seq is not None:
            seq.aborted = True
            if not seq.started:
                seq.outputs.put_nowait(EngineOutput((), "abort"))

    async def load_adapter(self, adapter: EngineAdapter) -> None:
        await self._adapter_job(adapter, unload=False)
        self._adapters.add(adapter.key)

    async def unload_adapter(self, key: str) -> None:
        self._adapters.discard(key)
        await self._adapter_job(EngineAdapter(key, "", 0), unload=True)

    async def _adapter_job(self, adapter: EngineAdapter, unload: bool) -> None:
        self._check_alive()
        loop = asyncio.get_running_loop()
        job = _AdapterJob(adapter, loop.create_future(), loop, unload)
        with self._lock:
            self._adapter_jobs.append(job)
        self._wakeup.set()
        await job.future

    def _check_adapter(self, key: str) -> None:
        if key and key not in self._adapters:
            raise EngineUnavailable(f"adapter {key!r} is not loaded in this engine")

    def _check_alive(self) -> None:
        failure = self._supervisor.failure
        if failure is not None:
            raise EngineUnavailable(f"transformers engine failed: {failure}")
        if not self._started:
            raise EngineUnavailable("transformers engine is not running")

    # ------------------------------------------------------------ scheduling

    async def _schedule(self) -> None:
        """The one loop feeding the worker (run by the supervisor, restarted if it dies)."""
        loop = asyncio.get_running_loop()
        while True:
            if self._adapter_jobs:  # idle worker: load / unload now
                await loop.run_in_executor(self._executor, self._run_adapter_jobs)
            if not self._pending:
                self._wakeup.clear()
                if self._adapter_jobs:
                    continue
                await self._wakeup.wait()
                if self._adapter_jobs:
                    continue
                # Give requests arriving together a moment to join the batch.
                await asyncio.sleep(self.batch_wait_s)
            # What was waiting may have left meanwhile (cancelled, timed out): look at
            # the queue and take from it under one lock, never assuming it is non-empty.
            with self._lock:
                head = self._pending[0] if self._pending else None
                if isinstance(head, _ScoreJob):
                    job = self._pending.popleft()
                    self._scoring = len(job.items) if not job.future.done() else 0
                batch = self._take_generation_batch() if isinstance(head, _Sequence) else []
            try:
                if isinstance(head, _ScoreJob):
                    if job.future.done():  # its caller is gone
                        continue
                    try:
                        job.results = await loop.run_in_executor(
                            self._executor, self._score_items, job.items, job.top_k,
                            job.adapter
                        )
                    finally:
                        self._scoring = 0
                    if not job.future.done():
                        job.future.set_result(job.results)
                elif batch:
                    await loop.run_in_executor(self._executor, self._decode_batch, batch)
            except Exception as exc:  # the model or device failed: fail everything, stop
                # Failed first, so no request is queued after the sweep below.
                self._supervisor.fail(exc)
                self._fail_all(exc)
                raise Fatal(f"model work failed: {type(exc).__name__}: {exc}") from exc

    def _take_generation_batch(self, size: int = 0, tokens: int = 0) -> list[_Sequence]:
        """Sequences from the head of the queue while they fit beside ``size`` rows
        using ``tokens`` (a score job stops the batch: arrival order is kept, so
        scoring is not starved by a stream of generations). Call with the lock held."""
        batch: list[_Sequence] = []
        for item in list(self._pending):
            if not isinstance(item, _Sequence):
                break
            cost = _cost(item)
            if (batch or size) and (
                size + len(batch) >= self.max_batch_size or tokens + cost > self.max_batch_tokens
            ):
                break
            self._pending.popleft()
            if item.aborted:
                continue
            batch.append(item)
            tokens += cost
        return batch

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        with self._lock:
            jobs = list(self._adapter_jobs)
            self._adapter_jobs.clear()
        for job in jobs:
            job.done(EngineUnavailable(f"engine failed: {exc}"))
        for item in pending + list(self._running.values()):
            if isinstance(item, _ScoreJob):
                if not item.future.done():
                    item.future.set_exception(EngineUnavailable(f"engine failed: {exc}"))
            else:
                item.outputs.put_nowait(exc)

    # ------------------------------------------------------------ model work (worker thread)

    @torch.inference_mode()  # as decoding runs them: peft may touch tensors made there
    def _run_adapter_jobs(self) -> None:
        """Load / unload the adapters asked for (between forwards: the worker is the only
        user of the model). A bad adapter fails its job only."""
        with self._lock:
            jobs = list(self._adapter_jobs)
            self._adapter_jobs.clear()
        for job in jobs:
            try:
                if job.unload:
                    self._free_adapter(job.adapter.key)
                else:
                    self._add_adapter(job.adapter)
            except Exception as exc:
                what = "freeing" if job.unload else f"loading ({job.adapter.path})"
                log.warning("adapter %s: %s failed: %s", job.adapter.key, what, exc)
                if not job.unload and not isinstance(exc, InvalidArgument):
                    exc = InvalidArgument("path", f"peft could not load the adapter: {exc}")
                job.done(exc)
            else:
                job.done()

    def _add_adapter(self, adapter: EngineAdapter) -> None:
        from peft import PeftModel

        if self._peft is None:
            self._peft = PeftModel.from_pretrained(
                self.model, adapter.path, adapter_name=adapter.key, is_trainable=False,
                torch_device=self.device,
            )
            self.model = self._peft.eval()
            return
        try:
            self._peft.load_adapter(
                adapter.path, adapter_name=adapter.key, is_trainable=False,
                torch_device=self.device,
            )
        except Exception:
            if adapter.key in self._peft.peft_config:  # half loaded: take it out again
                self._peft.delete_adapter(adapter.key)
            raise

    def _free_adapter(self, key: str) -> None:
        peft = self._peft
        if peft is None or key not in peft.peft_config:
            return
        if len(peft.peft_config) == 1:  # the last one: back to the plain model
            self.model = peft.unload()
            self._peft = None
        else:
            with warnings.catch_warnings():  # "was active, now deleted": rows name theirs
                warnings.filterwarnings("ignore", message=".*was active which is now deleted")
                peft.delete_adapter(key)

    def _adapter_args(self, keys: Sequence[str]) -> dict:
        """The forward's ``adapter_names`` (one per batch row) while adapters are loaded."""
        if self._peft is None:
            return {}
        return {"adapter_names": [k or "__base__" for k in keys]}

    @torch.inference_mode()
    def _decode_batch(self, batch: list[_Sequence]) -> None:
        """Decode until every row is done, admitting waiting sequences between steps.

        Continuous batching: after each decoding step, sequences that arrived meanwhile
        (and fit the size and token budgets) are prefilled and their KV cache is merged
        into the running batch, left-padded to a common length; finished rows leave the
        batch and the cache at once. Positions are tracked per row, so padding never
        shifts a sequence's rotary positions.
        """
        running: _Running | None = None
        joining = batch
        while True:
            if joining:
                joined = self._prefill(joining)
                running = joined if running is None else running.merge(joined)
                joining = []
            if running is None or not running.rows:
                joining = self._admit(0, 0) if self.continuous else []
                if not joining:
                    return
                running = None
                continue
            next_ids = torch.tensor([r.next_id for r in running.rows], device=self.device)
            mask = torch.cat([running.mask, running.mask.new_ones((len(running.rows), 1))], 1)
            positions = (running.last_pos + 1).unsqueeze(1)
            out = self.model(
                input_ids=next_ids.unsqueeze(1),
                attention_mask=mask,
                position_ids=positions,
                past_key_values=running.cache,
                use_cache=True,
                logits_to_keep=1,
                **self._adapter_args([r.seq.request.adapter for r in running.rows]),
            )
            running.mask, running.last_pos = mask, positions[:, 0]
            running.keep(self._sample_rows(running.rows, out.logits[:, -1, :].float()))
            if self._adapter_jobs:  # between steps: the running rows' adapters stay loaded
                self._run_adapter_jobs()
            if self.continuous and running.can_merge:
                joining = self._admit(len(running.rows), running.tokens())

    def _prefill(self, seqs: list[_Sequence]) -> _Running:
        """Run the prompts of newly admitted sequences and sample their first tokens."""
        rows = []
        for s in seqs:
            s.started = True
            g = torch.Generator(device=self.device)
            g.manual_seed(s.request.sampling.seed)
            rows.append(_Row(s, g))
        prompts = [list(s.request.prompt_ids) for s in seqs]
        adapters = [s.request.adapter for s in seqs]
        # A packed sequence is one batch row, so one adapter for all its prompts.
        if self.packed_prefill and len(seqs) > 1 and len(set(adapters)) == 1:
            running, logits = self._prefill_packed(rows, prompts)
        else:
            input_ids, attention = self._left_pad(prompts)
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **self._adapter_args(adapters),
            )
            running = _Running(rows, out.past_key_values, attention, positions[:, -1])
            logits = out.logits[:, -1, :]
        running.keep(self._sample_rows(rows, logits.float()))
        return running

    def _prefill_packed(
        self, rows: list[_Row], prompts: list[list[int]]
    ) -> tuple[_Running, torch.Tensor]:
        """All prompts as one sequence, each attending only to itself (block-diagonal
        causal mask, positions restarting per prompt), so no compute goes to padding;
        a prefix they all share (a system prompt, few-shot examples) is computed once.
        The cache is then laid out one left-padded row per prompt, as decoding expects."""
        shared = _common_prefix(prompts)
        if shared < _MIN_SHARED_PREFIX:
            shared = 0
        suffixes = [p[shared:] for p in prompts]
        lengths = torch.tensor([len(t) for t in suffixes])
        ends = shared + lengths.cumsum(0)  # each suffix's end in the packed sequence
        # Segment -1 is the shared prefix, which every prompt attends to.
        own = torch.repeat_interleave(torch.arange(len(prompts)), lengths)
        segment = torch.cat([torch.full((shared,), -1), own])
        positions = torch.cat(
            [torch.arange(shared)] + [torch.arange(shared, shared + len(t)) for t in suffixes]
        )
        total = int(ends[-1])
        mask = torch.ones(total, total, dtype=torch.bool).tril_()
        mask &= (segment[:, None] == segment[None, :]) | (segment[None, :] == -1)
        tokens = prompts[0][:shared] + [t for suffix in suffixes for t in suffix]
        out = self.model(
            input_ids=torch.tensor(tokens).unsqueeze(0).to(self.device),
            attention_mask=mask[None, None].to(self.device),
            position_ids=positions.unsqueeze(0).to(self.device),
            use_cache=True,
            logits_to_keep=(ends - 1).to(self.device),  # each prompt's last position
            **self._adapter_args([rows[0].seq.request.adapter]),
        )
        # Where each row's cache column comes from in the packed sequence: the shared
        # prefix, then the row's own suffix, right-aligned; left padding reads
        # position 0 and is masked out.
        full = torch.tensor([shared + len(t) for t in suffixes])
        width = int(full.max())
        source = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, (end, n) in enumerate(zip(ends.tolist(), lengths.tolist(), strict=True)):
            source[row, width - n - shared : width - n] = torch.arange(shared)
            source[row, width - n :] = torch.arange(end - n, end)
        source = source.to(self.device)
        cache = out.past_key_values
        for layer in cache.layers:  # [1, heads, total, dim] -> [rows, heads, width, dim]
            layer.keys = layer.keys[0][:, source].transpose(0, 1).contiguous()
            layer.values = layer.values[0][:, source].transpose(0, 1).contiguous()
        columns = torch.arange(width)
        attention = (columns >= width - full[:, None]).long().to(self.device)
        last = (full - 1).to(self.device)
        return _Running(rows, cache, attention, last), out.logits[0]

    def _sample_rows(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Sample each row's next token and emit it; the rows that go on."""
        keep = []
        for i, row in enumerate(rows):
            seq = row.seq
            opts = seq.request.sampling
            if seq.aborted:
                seq.emit(EngineOutput((), "abort"))
                continue
            token, step = self._sample(logits[i], opts, row.count, row.generator)
            row.count += 1
            finish = None
            if token in self.eos_ids:
                finish = "eos"
            elif row.count >= opts.max_new_tokens:
                finish = "length"
            seq.emit(EngineOutput((step,), finish))
            if finish is None:
                row.next_id = token
                keep.append(i)
        return keep

    def _admit(self, size: int, tokens: int) -> list[_Sequence]:
        """Waiting sequences that fit beside ``size`` running rows using ``tokens``."""
        with self._lock:
            return self._take_generation_batch(size, tokens)

    def _sample(
        self, logits: torch.Tensor, opts: SamplingParams, produced: int, generator: torch.Generator
    ) -> tuple[int, TokenStep]:
        logprobs = torch.log_softmax(logits, dim=-1)  # raw model distribution, as reported
        scores = logits.clone()
        if produced < opts.min_new_tokens and self.eos_ids:
            scores[list(self.eos_ids)] = float("-inf")
        if opts.greedy:
            token = int(torch.argmax(scores))
        else:
            scores = scores / opts.temperature
            if opts.top_k > 0:
                kth = torch.topk(scores, min(opts.top_k, scores.numel())).values[-1]
                scores[scores < kth] = float("-inf")
            if 0.0 < opts.top_p < 1.0:
                sorted_scores, order = torch.sort(scores, descending=True)
                cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
                # Drop tokens once the mass before them already reaches top_p.
                drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= opts.top_p
                scores[order[drop]] = float("-inf")
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        top: tuple[tuple[int, float], ...] = ()
        if opts.top_logprobs > 0:
            values, ids = torch.topk(logprobs, opts.top_logprobs)
            top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        lp = float(logprobs[token]) if (opts.logprobs or opts.top_logprobs) else None
        return token, TokenStep(token, lp, top)

    @torch.inference_mode()
    def _score_items(
        self, items: Sequence[ScoreInput], top_k: int = 0, adapter: str = ""
    ) -> list[ScoreOutput]:
        results: list[ScoreOutput] = []
        # Chunks bounded by completion tokens: logits are kept for those positions only.
        for chunk in _chunks_by_budget(items, self.max_score_tokens):
            seqs = [list(it.prompt_ids) + list(it.completion_ids) for it in chunk]
            input_ids, attention = self._left_pad(seqs)
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
            longest = max(len(it.completion_ids) for it in chunk)
            # Left padding puts every completion at the end: keep the last
            # `longest` predicting positions (each predicts the next token).
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                logits_to_keep=longest + 1,
                **self._adapter_args([adapter] * len(chunk)),
            )
            logits = out.logits[:, :-1, :].float()
            for row, it in enumerate(chunk):
                n = len(it.completion_ids)
                if n == 0:
                    results.append(ScoreOutput([], _empty_top(top_k)))
                    continue
                row_logits = logits[row, longest - n :]
                targets = torch.tensor(list(it.completion_ids), device=row_logits.device)
                # One row's [n, vocab] at a time (never the whole chunk's), reused in place.
                row_lp = torch.log_softmax(row_logits, dim=-1)
                lp = row_lp.gather(1, targets[:, None])[:, 0]
                results.append(ScoreOutput(lp.tolist(), _top_rows(row_lp, top_k)))
        return results

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[row, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)


def _top_rows(logprobs: torch.Tensor, k: int) -> TopK | None:
    """The k most likely tokens of each row of ``logprobs`` [n, vocab] (sorted) and the
    log of the mass outside them, computed exactly as the logsumexp of the other
    entries (no 1 - sum cancellation). Overwrites ``logprobs``."""
    if k <= 0:
        return None
    values, ids = torch.topk(logprobs, k, dim=-1)  # sorted high to low
    tail = logprobs.scatter_(1, ids, float("-inf")).logsumexp(-1)
    return TopK(ids.to(torch.int32).cpu().numpy(), values.cpu().numpy(), tail.cpu().numpy())


def _empty_top(k: int) -> TopK | None:
    if k <= 0:
        return None
    return TopK(np.zeros((0, k), np.int32), np.zeros((0, k), np.float32),
                np.zeros(0, np.float32))


def _common_prefix(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one of its own (whose
    logits give that prompt's first sampled token)."""
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


def _chunks_by_budget(items: Sequence[ScoreInput], budget: int):
    chunk: list[ScoreInput] = []
    longest = 0
    for it in items:
        n = max(1, len(it.completion_ids))
        if chunk and max(longest, n) * (len(chunk) + 1) > budget:
            yield chunk
            chunk, longest = [], 0
        chunk.append(it)
        longest = max(longest, n)
    if chunk:
        yield chunk
