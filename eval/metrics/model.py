"""The model under evaluation, as metrics see it: greedy generation, scoring and
tokenization, all through the teacher service's public methods.

Every metric's prompts go to the service as one batch (``generate_batch``, in
chunks for progress); the engine micro-batches them, exactly as the teacher does.
A metric that must load the model itself (base and tuned logits side by side) gets
its files instead (:class:`ModelFiles`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.loading import MODEL_NAME

_CHUNK = 64  # prompts per generate_batch / score call: progress granularity; the engine batches


@dataclass(frozen=True)
class ModelFiles:
    """The model under evaluation as files, for a metric that loads it itself
    (``Metric.in_process``, e.g. one that needs base and tuned logits together)."""

    base_path: Path  # the base checkpoint directory
    adapter_dir: Path | None  # the subject's LoRA adapter; None: the base model


class ServedModel:
    """One model hosted by a started :class:`teacher.serving.service.TeacherService`."""

    def __init__(self, service: Any, name: str = MODEL_NAME):
        self.service = service
        self.name = name

    @property
    def tokenizer(self) -> Any:
        """The :class:`teacher.serving.tokenization.PromptTokenizer` behind every prompt."""
        return self.service.tokenizer(self.name)

    def render_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """Chat messages as the model reads them, to continue as raw text."""
        return self.service.render_prompt(self.name, messages)

    @property
    def context_length(self) -> int:
        return next(info.context_length for info, _ in self.service.list_models()
                    if info.name == self.name)

    async def generate(self, prompts: Sequence[Any], max_new_tokens: int,
                       stop: Sequence[str], progress: Any = None) -> list[str]:
        """Greedy outputs, in order (see :meth:`generate_stopped`)."""
        return [text for text, _ in await self.generate_stopped(prompts, max_new_tokens, stop,
                                                                progress)]

    async def generate_stopped(self, prompts: Sequence[Any], max_new_tokens: int,
                               stop: Sequence[str], progress: Any = None,
                               ) -> list[tuple[str, str]]:
        """Greedy (output, stop reason) pairs, in order; the reasons are the service's
        (``"max_tokens"``: cut off at the budget). Prompts whose length leaves less room
        than ``max_new_tokens`` get what the context allows (they are grouped by that
        budget, so the rest still go to the engine together)."""
        from teacher.serving.sampling import SamplingParams

        context = self.context_length
        budgets = []
        for p in prompts:
            n = len(self.service.tokenize(self.name, p))
            budgets.append(max(0, min(max_new_tokens, context - n)))
        # A prompt that fills the context is scored as a wrong, empty answer, cut off.
        outputs = [("", "max_tokens")] * len(prompts)
        for budget in sorted(set(budgets)):
            if budget == 0:
                continue
            idx = [i for i, b in enumerate(budgets) if b == budget]
            params = SamplingParams(temperature=0.0, seed=0, max_new_tokens=budget,
                                      stop=tuple(stop))
            for start in range(0, len(idx), _CHUNK):
                part = idx[start : start + _CHUNK]
                results, _, _ = await self.service.generate_batch(
                    self.name, [prompts[i] for i in part], params)
                for i, samples in zip(part, results, strict=True):
                    outputs[i] = (samples[0].text, samples[0].stop_reason)
                if progress is not None:
                    progress.update(len(part))
        return outputs

    async def score(self, pairs: Sequence[tuple[Any, str]]) -> list[tuple[float, int]]:
        """(summed NLL, tokens) of each completion after its prompt."""
        from teacher.serving.service import ScoreItem

        out: list[tuple[float, int]] = []
        for start in range(0, len(pairs), _CHUNK):
            chunk = [ScoreItem(p, c) for p, c in pairs[start : start + _CHUNK]]
            results, _ = await self.service.score(self.name, chunk)
            out += [(r.nll_sum, r.num_tokens) for r in results]
        return out

    async def score_tokens(self, inputs: Sequence[Any]) -> list[list[float]]:
        """Per-token logprobs of token-id (context, completion) pairs
        (:class:`teacher.serving.engine.ScoreInput`), for windows cut by token."""
        return await self.service.score_tokens(self.name, inputs)
