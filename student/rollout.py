"""One on-policy rollout: the student samples, the teacher scores the sampled tokens.

* :class:`Sampler` is the seam where the student's completions come from.
  :class:`InProcessSampler` samples with the training model itself (its current
  adapter, eval mode, no grad). A server sampler (the teacher server hosting the
  student's base model, the adapter pushed each step with ``LoadAdapter(replace=True)``
  and sampled with ``GenerateBatch(model=<adapter>)``) implements the same protocol;
  ``OnPolicyCounters`` times each phase so the two can be measured against each other.
* :class:`TeacherLink` is the teacher's ``Score`` API called from the synchronous
  Trainer: a ``TeacherClient`` on its own event-loop thread, talking to a running
  server (``teacher.address``) or to a real gRPC server started in-process
  (``teacher.serving.local.local_teacher``).
* :func:`teacher_token_ids` lines the teacher's scored tokens up with the sampled
  ones. ``Score`` takes text, so the sample is decoded (special tokens kept, so an
  end-of-sequence token is scored too) and the teacher re-encodes it. Where the
  student sampled a non-canonical tokenization of its text, the teacher's (canonical)
  tokens are trained on and counted; a teacher whose tokenizer disagrees with the
  student's on the same text is refused (cross-tokenizer distillation is out of scope).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from student.data import StudentError
from student.on_policy_config import SamplingConfig, TeacherConfig
from teacher.core.templates import Messages


@dataclass(frozen=True)
class Sample:
    """One sampled completion of one prompt of the batch."""

    prompt_index: int
    prompt_ids: list[int]
    completion_ids: list[int]  # up to and including the end-of-sequence token if one came
    finished: bool  # ended with end-of-sequence (else cut at max_new_tokens)


class Sampler(Protocol):
    """Where the current student's completions come from."""

    def sample(self, prompts: Sequence[Messages], settings: SamplingConfig) -> list[Sample]:
        """``settings.samples_per_prompt`` samples of each prompt, grouped by prompt."""
        ...


def encode_chat(tokenizer: Any, prompt: Messages) -> list[int]:
    """The prompt as the model reads it (its chat template with the generation prompt),
    as the teacher server encodes it (teacher.serving.tokenization.PromptTokenizer)."""
    text = tokenizer.apply_chat_template([dict(m) for m in prompt], tokenize=False,
                                         add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


class InProcessSampler:
    """Samples with the training model and its current adapter (eval mode, no grad,
    the KV cache on), then puts the model back in training mode. Randomness comes from
    torch's global generator, which the Trainer seeds and checkpoints (a resumed run
    samples what the uninterrupted one would have)."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer

    def sample(self, prompts: Sequence[Messages], settings: SamplingConfig) -> list[Sample]:
        import torch

        tok, model = self.tokenizer, self.model
        encoded = [encode_chat(tok, p) for p in prompts]
        width = max(len(ids) for ids in encoded)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos_ids(model, tok)[0]
        # Left padding: every prompt ends where generation starts.
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in encoded])
        attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in encoded])
        device = next(model.parameters()).device
        eos = eos_ids(model, tok)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device),
                    do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                    # The policy itself: none of the model's shipped sampling defaults
                    # (Qwen's top_k 20, repetition penalty 1.05) that would bend it.
                    top_k=0, repetition_penalty=1.0, min_new_tokens=0,
                    max_new_tokens=settings.max_new_tokens,
                    num_return_sequences=settings.samples_per_prompt,
                    eos_token_id=eos, pad_token_id=pad, use_cache=True)
        finally:
            model.train(was_training)
        samples = []
        for row, seq in enumerate(out[:, width:].tolist()):
            cut = next((i for i, t in enumerate(seq) if t in eos), None)
            completion = seq if cut is None else seq[: cut + 1]
            index = row // settings.samples_per_prompt
            samples.append(Sample(index, encoded[index], completion, cut is not None))
        return samples


def make_sampler(name: str, model: Any, tokenizer: Any) -> Sampler:
    """The sampler ``sampling.sampler`` names (student.on_policy_config.SAMPLERS)."""
    if name == "in_process":
        return InProcessSampler(model, tokenizer)
    raise StudentError(f"sampling.sampler: no sampler {name!r}")


# ---------------------------------------------------------------- the teacher


class TeacherLink:
    """The teacher's ``Score`` (and ``Tokenize``) for synchronous callers.

    ``teacher.address`` set: a client of that server, requests naming
    ``teacher.model``. Unset: ``teacher.model`` served by a real gRPC server started in
    this process on a free localhost port (the same code path as a remote teacher).
    """

    def __init__(self, cfg: TeacherConfig, *, seed: int = 0):
        self.cfg = cfg
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="teacher-link")
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()
        try:
            self.client, self.model_name = self._call(self._open(seed))
            self.info = self._call(self._describe())
        except BaseException:
            self.close()
            raise

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _open(self, seed: int) -> tuple[Any, str]:
        from teacher.serving.client import TeacherClient

        cfg = self.cfg
        if cfg.address:
            token = Path(cfg.token_file).read_text().strip() if cfg.token_file else None
            client = await self._stack.enter_async_context(
                TeacherClient(cfg.address, token=token, timeout_s=cfg.timeout_s))
            await client.wait_ready(timeout_s=cfg.timeout_s)
            return client, cfg.model
        from teacher.serving.engine import EngineSettings
        from teacher.serving.local import local_teacher
        from teacher.serving.server import parse_model_spec

        spec = parse_model_spec(cfg.model)
        client, _server = await self._stack.enter_async_context(local_teacher(
            [spec], EngineSettings(name=cfg.engine, seed=seed), timeout_s=cfg.timeout_s))
        return client, spec.name

    async def _describe(self) -> dict[str, Any]:
        models = await self.client.list_models()
        match = [m for m in models if m.name == self.model_name]
        if not match:
            names = ", ".join(m.name for m in models)
            raise StudentError(f"teacher.model: {self.model_name!r} is not served by the "
                               f"teacher (it serves: {names})")
        info = asdict(match[0])
        return {k: v for k, v in info.items() if isinstance(v, str | int | float | bool)}

    def score(self, items: Sequence[tuple[Messages, str]]) -> list[Any]:
        """``ScoreResult`` (with token ids) of each (prompt, completion text)."""
        return self._call(self.client.score(list(items), model=self.model_name,
                                            return_tokens=True))

    def prompt_ids(self, prompt: Messages) -> list[int]:
        return list(self._call(self.client.tokenize(prompt, model=self.model_name)).token_ids)

    def describe(self) -> dict[str, Any]:
        where = self.cfg.address or "in-process (teacher.serving.local)"
        return {"address": where, "model": self.model_name, "source": self.cfg.model,
                **{k: v for k, v in self.info.items() if k != "name"}}

    def close(self) -> None:
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                self._call(self._stack.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._loop.close()


def check_same_tokenizer(teacher: TeacherLink, tokenizer: Any, prompt: Messages) -> None:
    """Refuse a teacher whose prompt tokens differ from the student's (another
    vocabulary or chat template: its log-probs would be of other tokens)."""
    mine, theirs = encode_chat(tokenizer, prompt), teacher.prompt_ids(prompt)
    if mine != theirs:
        at = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b),
                  min(len(mine), len(theirs)))
        raise StudentError(
            f"teacher.model: {teacher.model_name!r} tokenizes the prompt differently from the "
            f"student ({len(theirs)} vs {len(mine)} tokens, first difference at token {at}); "
            "on-policy distillation needs the student's vocabulary and chat template")


def teacher_token_ids(sampled: Sequence[int], teacher_ids: Sequence[int],
                      canonical: Sequence[int]) -> tuple[list[int], bool]:
    """The completion tokens to train on and whether they differ from the sampled ones.

    ``teacher_ids``: the teacher's tokens of the decoded sample; ``canonical``: the
    student tokenizer's encoding of the same text. The sampled tokens when the teacher
    scored exactly those; the teacher's when the student sampled a non-canonical
    tokenization of its text (both tokenizers agree on it); otherwise an error.
    """
    if list(teacher_ids) == list(sampled):
        return list(sampled), False
    if list(teacher_ids) == list(canonical):
        return list(teacher_ids), True
    raise StudentError("teacher.model: the teacher tokenizes the student's completion "
                       "differently from the student's tokenizer; on-policy distillation "
                       "needs the student's vocabulary")
