"""Scripted outputs for one metric's ``compute`` in its unit tests: the model's text
is the input under test there (a random model cannot write "#### 18" on cue). Not for
paths through the runner or the service: tests/eval/test_run_loop.py serves a tiny
random model, tests/eval/test_run.py the real test model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from teacher.core.tasks import Example


def gsm8k_example(final: str = "1,234", index: int = 0) -> Example:
    return Example(f"gsm8k/test/{index:06d}", "gsm8k", "test", "q?", f"Work.\n#### {final}", final)


class FakeTokenizer:
    """Whitespace "tokens": ``encode_completion`` splits, ``decode`` joins; the chat
    template writes ``<role>: content`` lines and an ``assistant:`` prompt."""

    bos_token_id = 0
    eos_token_id = 1

    @staticmethod
    def chat_text(messages: Sequence[dict[str, str]]) -> str:
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode_completion(self, text: str) -> list[int]:
        return [self.vocab.setdefault(w, len(self.vocab) + 2) for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        words = {i: w for w, i in self.vocab.items()}
        return " ".join(words[i] for i in ids)


class FakeModel:
    """A :class:`eval.metrics.model.ServedModel` stand-in: ``answer(prompt)`` is the
    greedy output; a completion's NLL is its length in words, each token -1.0."""

    def __init__(self, answer: Callable[[Any], str] = lambda prompt: "") -> None:
        self.answer = answer
        self.tokenizer = FakeTokenizer()
        self.prompts: list[Any] = []

    def render_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        return self.tokenizer.chat_text(messages)

    async def generate(self, prompts: Sequence[Any], max_new_tokens: int,
                       stop: Sequence[str], progress: Any = None) -> list[str]:
        self.prompts += list(prompts)
        if progress is not None:
            progress.update(len(prompts))
        return [self.answer(p) for p in prompts]

    async def generate_stopped(self, prompts: Sequence[Any], max_new_tokens: int,
                               stop: Sequence[str], progress: Any = None,
                               ) -> list[tuple[str, str]]:
        """As the service: cut off ("max_tokens") at ``max_new_tokens`` words."""
        outputs = await self.generate(prompts, max_new_tokens, stop, progress)
        return [(" ".join(o.split()[:max_new_tokens]), "max_tokens")
                if len(o.split()) >= max_new_tokens else (o, "eos") for o in outputs]

    async def score(self, pairs: Sequence[tuple[Any, str]]) -> list[tuple[float, int]]:
        return [(float(len(c.split())), len(c.split())) for _, c in pairs]

    async def score_tokens(self, inputs: Sequence[Any]) -> list[list[float]]:
        return [[-1.0] * len(i.completion_ids) for i in inputs]
