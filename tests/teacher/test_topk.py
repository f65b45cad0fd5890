"""The top-k side file round-trips arrays exactly and survives a torn last frame."""

from pathlib import Path

import numpy as np
import pytest

from teacher.core.topk import TopK, TopKError, TopKWriter, read_topk, side_path


def _topk(tokens: int, k: int, seed: int) -> TopK:
    rng = np.random.default_rng(seed)
    lps = np.sort(np.log(rng.dirichlet(np.ones(k + 3), tokens)[:, :k]), axis=1)[:, ::-1]
    tail = np.log1p(-np.exp(lps).sum(axis=1))
    return TopK(rng.integers(0, 151_936, (tokens, k)), lps, tail)


def test_round_trip_and_resume_after_torn_frame(tmp_path: Path) -> None:
    path = side_path(tmp_path / "part-00000.jsonl")
    assert path.name == "part-00000.topk"
    a, b = _topk(5, 3, 0), _topk(7, 3, 1)
    with TopKWriter(path) as writer:
        writer.write("q-1", a)
        writer.write("q-2", b)
    whole = path.read_bytes()
    path.write_bytes(whole[:-5])  # killed mid-write of q-2
    with TopKWriter(path) as writer:
        assert writer.ids == {"q-1"}
        writer.write("q-2", b)
    got = read_topk(path)
    assert sorted(got) == ["q-1", "q-2"]
    for want, have in ((a, got["q-1"]), (b, got["q-2"])):
        np.testing.assert_array_equal(have.token_ids, want.token_ids)
        np.testing.assert_array_equal(have.logprobs, want.logprobs)
        np.testing.assert_array_equal(have.tail_logprobs, want.tail_logprobs)
    assert path.read_bytes() == whole


def test_from_flat_checks_shapes() -> None:
    t = TopK.from_flat(2, [1, 2, 3, 4], [-0.1, -2.0, -0.5, -1.0], [-3.0, -2.0])
    assert (t.num_tokens, t.k) == (2, 2)
    assert t.token_ids.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(TopKError, match="k=2"):
        TopK.from_flat(2, [1, 2, 3], [-0.1, -2.0, -0.5], [-3.0, -2.0])
    with pytest.raises(TopKError, match="tail_logprobs"):
        TopK(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros(3))
