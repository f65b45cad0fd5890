"""Top-k side files: the teacher's k most likely next tokens at every response token.

Offline logit distillation trains the student on the teacher's distribution, not
only on its text. Storing the full vocabulary (151,936 entries per token for Qwen)
is out of the question, so, as DistillKit and TRL's offline KD do, a record keeps
the teacher's top-k token ids and log-probs per response position plus the mass
outside them (``tail_logprobs``), row ``t`` being the distribution that predicted
response token ``t``.

The arrays live in a binary side file beside the JSONL shard (``part-00000.jsonl``
-> ``part-00000.topk``), so record lines stay small and readable. The file is a
sequence of self-checking frames, one per record, appended as records are written:

    u32 payload length | payload | u32 crc32(payload)
    payload = u16 id length | id (utf-8) | u32 tokens | u16 k
              | int32 ids [tokens * k] | float32 logprobs [tokens * k]
              | float32 tail [tokens]   (little-endian throughout)

A job killed mid-write leaves at most one torn frame at the end; reopening the
writer drops it (like a torn last JSONL line) so the job resumes from its last
complete record.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

SUFFIX = ".topk"
_HEAD = struct.Struct("<I")
_META = struct.Struct("<IH")


class TopKError(ValueError):
    """A malformed top-k side file or array; the message names the file or field."""


@dataclass(frozen=True)
class TopK:
    """The teacher's top-k next-token log-probs at each of ``num_tokens`` positions."""

    token_ids: np.ndarray  # int32 [tokens, k]
    logprobs: np.ndarray  # float32 [tokens, k], each row sorted high to low
    tail_logprobs: np.ndarray  # float32 [tokens]: log(1 - sum(exp(row))), the rest

    def __post_init__(self) -> None:
        ids = np.ascontiguousarray(self.token_ids, dtype=np.int32)
        lps = np.ascontiguousarray(self.logprobs, dtype=np.float32)
        tail = np.ascontiguousarray(self.tail_logprobs, dtype=np.float32)
        if ids.ndim != 2 or lps.shape != ids.shape:
            raise TopKError(f"token_ids {ids.shape} and logprobs {lps.shape} "
                            "must both be [tokens, k]")
        if tail.shape != (ids.shape[0],):
            raise TopKError(f"tail_logprobs {tail.shape} must be [tokens] = ({ids.shape[0]},)")
        object.__setattr__(self, "token_ids", ids)
        object.__setattr__(self, "logprobs", lps)
        object.__setattr__(self, "tail_logprobs", tail)

    @property
    def k(self) -> int:
        return int(self.token_ids.shape[1])

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @classmethod
    def from_flat(cls, k: int, token_ids: list[int], logprobs: list[float],
                  tail_logprobs: list[float]) -> TopK:
        """From the wire's flat row-major lists (``Score`` with ``top_k``)."""
        n = len(tail_logprobs)
        if k <= 0 or len(token_ids) != n * k or len(logprobs) != n * k:
            raise TopKError(f"top-k lists of {len(token_ids)} ids and {len(logprobs)} log-probs "
                            f"do not make {n} rows of k={k}")
        return cls(np.asarray(token_ids, np.int32).reshape(n, k),
                   np.asarray(logprobs, np.float32).reshape(n, k),
                   np.asarray(tail_logprobs, np.float32))


def side_path(records_path: Path) -> Path:
    """Where a JSONL shard's top-k arrays live: the same name with ``.topk``."""
    return Path(records_path).with_suffix(SUFFIX)


def _encode(record_id: str, topk: TopK) -> bytes:
    key = record_id.encode()
    if len(key) > 0xFFFF:
        raise TopKError(f"record id of {len(key)} bytes is too long for a top-k frame")
    payload = b"".join((struct.pack("<H", len(key)), key, _META.pack(topk.num_tokens, topk.k),
                        topk.token_ids.astype("<i4").tobytes(),
                        topk.logprobs.astype("<f4").tobytes(),
                        topk.tail_logprobs.astype("<f4").tobytes()))
    return _HEAD.pack(len(payload)) + payload + _HEAD.pack(zlib.crc32(payload))


def _decode(payload: bytes) -> tuple[str, TopK]:
    (n_key,) = struct.unpack_from("<H", payload)
    key = payload[2:2 + n_key].decode()
    tokens, k = _META.unpack_from(payload, 2 + n_key)
    at = 2 + n_key + _META.size
    cells = tokens * k
    ids = np.frombuffer(payload, "<i4", cells, at).reshape(tokens, k)
    lps = np.frombuffer(payload, "<f4", cells, at + 4 * cells).reshape(tokens, k)
    tail = np.frombuffer(payload, "<f4", tokens, at + 8 * cells)
    return key, TopK(ids, lps, tail)


def _frames(data: bytes) -> Iterator[tuple[int, str, TopK]]:
    """(end offset, id, arrays) of each complete, intact frame; stops at the first torn one."""
    at = 0
    while at + _HEAD.size <= len(data):
        (size,) = _HEAD.unpack_from(data, at)
        end = at + _HEAD.size + size + _HEAD.size
        if end > len(data):
            return
        payload = data[at + _HEAD.size:end - _HEAD.size]
        if zlib.crc32(payload) != _HEAD.unpack_from(data, end - _HEAD.size)[0]:
            return
        key, topk = _decode(payload)
        yield end, key, topk
        at = end


def read_topk(path: Path) -> dict[str, TopK]:
    """Every complete record's arrays, by record id (a later frame of an id wins)."""
    path = Path(path)
    if not path.exists():
        raise TopKError(f"{path}: no top-k side file (was the data made with top_k > 0?)")
    return {key: topk for _, key, topk in _frames(path.read_bytes())}


class TopKWriter:
    """Appends frames to a side file; opening it drops a torn last frame (resume)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        good = 0
        self.ids: set[str] = set()
        for end, key, _ in _frames(data):
            good = end
            self.ids.add(key)
        if good != len(data):
            with self.path.open("r+b") as f:
                f.truncate(good)
        self._file = self.path.open("ab")

    def write(self, record_id: str, topk: TopK) -> None:
        self._file.write(_encode(record_id, topk))
        self._file.flush()
        self.ids.add(record_id)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TopKWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
