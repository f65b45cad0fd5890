"""Helpers shared by the teacher tests: one engine sample's settings, and a scripted
engine behind a real :class:`~teacher.serving.service.TeacherService`, so the service
and the distillation modes are tested without a model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import numpy as np

from teacher.core.topk import TopK
from teacher.serving import engine as protocol
from teacher.serving.sampling import SamplingParams
from teacher.serving.service import Limits, ModelHost, TeacherService
from teacher.serving.tokenization import PromptTokenizer

FAIL = object()  # in a script: the engine fails that sample after one token


def one_sample(**settings) -> SamplingParams:
    """One sample's settings as the service hands them to an engine (seed 0, 128 tokens
    unless given)."""
    return SamplingParams(**settings).for_sample(0, default_max_new_tokens=128)


class CharTokenizer:
    """A Hugging Face tokenizer stand-in: one token per character."""

    chat_template = "plain"

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True) -> str:
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"


class ScriptedEngine:
    """Sample i of a request (seed i: pass seed 0) writes ``script[i]``, one character
    per step, after ``delay_s``; scores each completion token -0.1, -0.2 or -0.3 (and
    with top_k gives ``scripted_top`` rows)."""

    def __init__(self, script: Sequence[object], delay_s: float = 0.0,
                 vocab_size: int = 1 << 16, name: str = "scripted"):
        self.tokenizer = PromptTokenizer(CharTokenizer())
        self.script = list(script)
        self.delay_s = delay_s
        self.vocab_size = vocab_size
        self.name = name
        self.requests: list[protocol.EngineRequest] = []

    async def start(self) -> None:
        pass

    def info(self) -> protocol.ModelInfo:
        return protocol.ModelInfo(self.name, "scripted", "rev1", "scripted", "0", 1 << 20,
                                  self.vocab_size, (0,), "float32", "cpu")

    def load(self) -> protocol.EngineLoad:
        return protocol.EngineLoad()

    async def generate(
        self, request: protocol.EngineRequest
    ) -> AsyncIterator[protocol.EngineOutput]:
        self.requests.append(request)
        await asyncio.sleep(self.delay_s)
        entry = self.script[request.sampling.seed % len(self.script)]
        if entry is FAIL:
            yield protocol.EngineOutput((protocol.TokenStep(ord("x")),))
            yield protocol.EngineOutput((), finish="error")
            return
        text = str(entry)[: request.sampling.max_new_tokens]
        for i, char in enumerate(text):
            last = i == len(text) - 1
            finish = None
            if last:
                finish = "length" if len(text) == request.sampling.max_new_tokens else "eos"
            yield protocol.EngineOutput((protocol.TokenStep(ord(char)),), finish=finish)

    async def score(self, items: Sequence[protocol.ScoreInput],
                    top_k: int = 0) -> list[protocol.ScoreOutput]:
        return [protocol.ScoreOutput([-0.1 * (1 + t % 3) for t in item.completion_ids],
                                     scripted_top(item.completion_ids, top_k))
                for item in items]

    async def abort(self, request_id: str) -> None:
        pass

    def on_failure(self, callback) -> None:
        pass  # nothing runs in the background

    async def shutdown(self) -> None:
        pass


def scripted_top(ids: Sequence[int], k: int) -> TopK | None:
    """Row t: token ids[t] and the k - 1 ids after it, with probabilities 1/2, 1/4, ...;
    the tail holds the remaining 2^-k."""
    if k <= 0:
        return None
    rows = (np.asarray(ids, np.int64)[:, None] + np.arange(k)) % (1 << 16)
    lps = np.tile(np.log(0.5) * np.arange(1, k + 1), (len(ids), 1))
    return TopK(rows.reshape(len(ids), k), lps.reshape(len(ids), k),
                np.full(len(ids), k * np.log(0.5)))


async def scripted_service(script: Sequence[object], delay_s: float = 0.0,
                           names: Sequence[str] = ("teacher",)) -> TeacherService:
    """A started service whose models (``names``) all follow ``script``."""
    hosts = [ModelHost(name, ScriptedEngine(script, delay_s), 64) for name in names]
    service = TeacherService(hosts, Limits())
    await service.start()
    return service
