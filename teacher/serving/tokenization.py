"""Prompt tokenization and streaming detokenization, shared by every engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ChatMessage = dict[str, str]  # {"role": ..., "content": ...}
PromptInput = str | Sequence[ChatMessage]


def prompt_chars(prompt: PromptInput) -> int:
    """Characters of text in a prompt (a chat template only adds to them)."""
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(m.get("content", "")) for m in prompt)


class PromptTokenizer:
    """Wraps a Hugging Face tokenizer with the project's prompt conventions.

    Raw text is encoded with the tokenizer's special tokens (a BOS where the
    model uses one); chat messages go through the chat template with the
    generation prompt appended; completions are encoded without special
    tokens so ``prompt_ids + completion_ids`` is what the model would see.
    """

    def __init__(self, hf_tokenizer: Any):
        self.hf = hf_tokenizer
        self._max_token_chars: int | None = None

    @property
    def max_token_chars(self) -> int:
        """An upper bound on the characters one token stands for: the longest vocabulary
        entry (byte-level and sentencepiece entries are at least as long as their text),
        doubled as slack for normalizers that drop characters. 0: unknown."""
        if self._max_token_chars is None:
            vocab = self.hf.get_vocab() if hasattr(self.hf, "get_vocab") else {}
            self._max_token_chars = 2 * max((len(t) for t in vocab), default=0)
        return self._max_token_chars

    def min_tokens(self, chars: int) -> int:
        """Fewest tokens ``chars`` characters of text can become (0 when unknown): a
        bound checked before tokenizing, so oversized text costs no tokenizer time."""
        per_token = self.max_token_chars
        return chars // per_token if per_token else 0

    @classmethod
    def from_pretrained(cls, path: str) -> PromptTokenizer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(path))

    def encode_prompt(self, prompt: PromptInput) -> list[int]:
        if isinstance(prompt, str):
            return list(self.hf(prompt, add_special_tokens=True)["input_ids"])
        # The template already holds any BOS; do not add another.
        return list(self.hf(self.chat_text(prompt), add_special_tokens=False)["input_ids"])

    def chat_text(self, messages: Sequence[ChatMessage]) -> str:
        """Chat messages as the model reads them: the chat template, ending at the
        generation prompt (what ``encode_prompt`` encodes for a chat)."""
        if self.hf.chat_template is None:
            raise ValueError("this model has no chat template; send raw text")
        return self.hf.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
        )

    @property
    def bos_token_id(self) -> int | None:
        return self.hf.bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self.hf.eos_token_id

    def encode_completion(self, text: str) -> list[int]:
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.hf.decode([i], skip_special_tokens=False) for i in ids]


@dataclass
class TextDelta:
    text: str
    stop_sequence: str | None = None  # set when a stop sequence ended the text


class StreamDecoder:
    """Turns a growing list of token ids into text deltas, honouring stop strings.

    Text is released only once it is stable: not ending in an incomplete UTF-8
    character, and not a possible prefix of a stop sequence. When a stop
    sequence appears the text is cut before it and the stream is over.
    """

    def __init__(self, tokenizer: PromptTokenizer, stop: Sequence[str] = ()):
        self._tokenizer = tokenizer
        self._stop = [s for s in stop if s]
        self._ids: list[int] = []
        self._emitted = 0  # characters of the decoded text already released
        self.text = ""  # the full released text
        self.stopped_by: str | None = None

    def add(self, token_ids: Sequence[int]) -> TextDelta:
        self._ids.extend(token_ids)
        decoded = self._tokenizer.decode(self._ids)
        match = self._first_stop(decoded)
        if match is not None:
            cut, seq = match
            delta = decoded[self._emitted : cut] if cut > self._emitted else ""
            self._emitted = max(self._emitted, cut)
            self.text += delta
            self.stopped_by = seq
            return TextDelta(delta, seq)
        stable = len(decoded)
        if decoded.endswith("\ufffd"):  # an incomplete multi-byte character
            stable = len(decoded.rstrip("\ufffd"))
        stable = min(stable, len(decoded) - self._held_back(decoded))
        delta = decoded[self._emitted : stable] if stable > self._emitted else ""
        self._emitted = max(self._emitted, stable)
        self.text += delta
        return TextDelta(delta)

    def flush(self) -> str:
        """Release what was held back (the stream ended without a stop)."""
        decoded = self._tokenizer.decode(self._ids)
        delta = decoded[self._emitted :]
        self._emitted = len(decoded)
        self.text += delta
        return delta

    def _first_stop(self, decoded: str) -> tuple[int, str] | None:
        # Only search text not yet released (plus overlap), so each stop is found once.
        start = max(0, self._emitted - max((len(s) for s in self._stop), default=0))
        best: tuple[int, str] | None = None
        for seq in self._stop:
            pos = decoded.find(seq, start)
            if pos != -1 and (best is None or pos < best[0]):
                best = (pos, seq)
        return best

    def _held_back(self, decoded: str) -> int:
        """Length of the longest suffix that could begin a stop sequence."""
        longest = 0
        for seq in self._stop:
            for k in range(min(len(seq) - 1, len(decoded)), 0, -1):
                if decoded.endswith(seq[:k]):
                    longest = max(longest, k)
                    break
        return longest
