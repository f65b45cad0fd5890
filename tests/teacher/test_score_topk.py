"""Score with top_k (issue 16's offline logit KD): the scorer's top-k next-token
log-probs at every completion position, over a real gRPC server, against a plain
transformers forward of the same tokens; the limits; the wire round trip."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from teacher.api import teacher_pb2 as pb
from teacher.core.topk import TopK
from teacher.serving import convert
from teacher.serving.client import TeacherClient
from teacher.serving.errors import InvalidArgument, ResourceExhausted
from teacher.serving.service import (
    Limits,
    ModelHost,
    ScoreItem,
    ScoreResult,
    TeacherService,
)
from tests.conftest import HAS_VLLM
from tests.teacher.helpers import ScriptedEngine

CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
ITEMS = [("The capital of France is", " Paris. It is a large city on the Seine."),
         (CHAT, "The capital of France is Paris."),
         ("def fib(n):", "\n    return n if n < 2 else fib(n - 1) + fib(n - 2)")]
K = 20


# ---------------------------------------------------------------- without a model


def test_top_logprobs_travel_the_wire_unchanged():
    top = TopK(np.array([[5, 3], [7, 1]]), np.array([[-0.1, -2.5], [-0.5, -1.0]]),
               np.array([-2.4, -1.2]))
    result = ScoreResult((1, 2), (-0.1, -0.5), (), 0.6, 2, 0.3, 1.35, 0.0, 4, top)
    message = pb.ScoreResult.FromString(
        convert.score_result_to_pb(result, False).SerializeToString())
    back = convert.score_result_from_pb(message).top_logprobs
    assert back.k == 2 and back.num_tokens == 2
    np.testing.assert_array_equal(back.token_ids, top.token_ids)
    np.testing.assert_array_equal(back.logprobs, top.logprobs)
    np.testing.assert_array_equal(back.tail_logprobs, top.tail_logprobs)
    # Without top_k nothing travels, and the client sees None.
    plain = ScoreResult((1,), (-0.1,), (), 0.1, 1, 0.1, 1.1, 0.0, 4)
    message = convert.score_result_to_pb(plain, False)
    assert not message.HasField("top_logprobs")
    assert convert.score_result_from_pb(message).top_logprobs is None


def test_both_engines_build_the_same_rows_from_the_same_distribution():
    """hf takes the tail as the logsumexp of the rest, vLLM (which returns only the top
    k) as log(1 - sum(exp(row))): the same numbers, sorted rows, the floor for none."""
    import torch

    from teacher.serving.engines.hf import _top_rows
    from teacher.serving.engines.vllm import _MIN_TAIL_MASS, _top_from_flat

    torch.manual_seed(0)
    logprobs = torch.log_softmax(torch.randn(6, 50) * 3, -1)
    want = torch.sort(logprobs, -1, descending=True)
    hf = _top_rows(logprobs.clone(), 4)
    rows = [(want.indices[t, :4].tolist(), want.values[t, :4].tolist()) for t in range(6)]
    vllm = _top_from_flat(rows, 4)
    for top in (hf, vllm):
        np.testing.assert_array_equal(top.token_ids, want.indices[:, :4].numpy())
        np.testing.assert_allclose(top.logprobs, want.values[:, :4].numpy(), atol=1e-6)
        rest = torch.logsumexp(want.values[:, 4:].double(), -1).numpy()
        np.testing.assert_allclose(top.tail_logprobs, rest, rtol=1e-5, atol=1e-5)
    # All the mass in the top k: vLLM's 1 - sum is rounding, floored.
    (tail,) = _top_from_flat([([1, 2], [np.log(0.5), np.log(0.5)])], 2).tail_logprobs
    assert tail == np.float32(np.log(_MIN_TAIL_MASS))
    assert _top_rows(logprobs.clone(), 0) is None and _top_from_flat([], 0) is None


async def scripted(limits: Limits) -> TeacherService:
    service = TeacherService([ModelHost("m", ScriptedEngine(["x"]), 64)], limits)
    await service.start()
    return service


async def test_top_k_over_the_limit_and_oversized_replies_are_refused():
    service = await scripted(Limits(max_score_top_k=8, max_top_k_reply_bytes=4000))
    item = [ScoreItem("prompt", "a completion")]  # 12 tokens (one per character)
    with pytest.raises(InvalidArgument, match=r"^top_k: 9 outside \[0, 8\]"):
        await service.score("m", item, top_k=9)
    # 12 tokens x (8 x 8 + 4) bytes = 816 fits; 60 tokens x 68 = 4080 does not.
    with pytest.raises(ResourceExhausted, match=r"^top_k: 8 x 60 completion tokens"):
        await service.score("m", [ScoreItem("prompt", "a completion")] * 5, top_k=8)
    assert service.hosts["m"].admitted == 0


# ---------------------------------------------------------------- real servers


def reference(model, tok, prompt, completion) -> tuple[list[int], np.ndarray]:
    """Completion ids and the float64 log-softmax [tokens, vocab] that predicted them,
    from one plain forward of prompt + completion."""
    import torch

    if isinstance(prompt, str):
        prompt_ids = tok(prompt)["input_ids"]
    else:
        text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    completion_ids = tok(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1:-1].double()
    return completion_ids, torch.log_softmax(logits, -1).numpy()


def assert_top_k_matches(result, completion_ids, ref: np.ndarray, k: int, tol: float) -> None:
    top = result.top_logprobs
    assert isinstance(top, TopK) and top.k == k
    assert top.num_tokens == result.num_tokens == len(completion_ids) == ref.shape[0]
    order = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    want_lp = np.take_along_axis(ref, order, 1)
    # Ids equal, except where two candidates are tied within tolerance (their order,
    # or who is k-th, is then rounding): each served id must carry its rank's logprob.
    mismatched = top.token_ids != order
    got_ref_lp = np.take_along_axis(ref, top.token_ids.astype(np.int64), 1)
    assert np.all(np.abs(got_ref_lp - want_lp)[mismatched] < tol), "top-k ids differ"
    assert mismatched.mean() < 0.02
    assert len({tuple(r) for r in top.token_ids.tolist()}) > 1  # rows differ per position
    assert np.max(np.abs(top.logprobs - want_lp)) < tol
    assert np.all(np.diff(top.logprobs, axis=1) <= 0)  # sorted high to low
    mass = np.exp(want_lp).sum(1)
    want_tail = np.log1p(-mass)
    assert np.max(np.abs(np.exp(top.tail_logprobs) - (1 - mass))) < tol
    wide = 1 - mass > 1e-3  # in log space where the tail is not vanishing
    assert np.max(np.abs(top.tail_logprobs - want_tail)[wide], initial=0) < 20 * tol
    # The scored tokens' own logprobs agree with their rows.
    for t, (token, lp) in enumerate(zip(completion_ids, result.logprobs, strict=True)):
        row = list(top.token_ids[t])
        if token in row:
            assert abs(top.logprobs[t, row.index(token)] - lp) < 1e-5


@pytest.fixture(scope="module")
def hf_reference(test_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(test_model_dir)
    model = AutoModelForCausalLM.from_pretrained(test_model_dir, dtype=torch.float32).eval()
    return model, tok


async def check_server(engine: str, test_model_dir, hf_reference, tol: float) -> None:
    from tests.teacher.test_server import start_server

    server = await start_server(test_model_dir, engine)
    try:
        async with TeacherClient(f"127.0.0.1:{server.port}", retries=1) as client:
            results = await client.score(ITEMS, top_k=K, return_tokens=True)
            model, tok = hf_reference
            for (prompt, completion), result in zip(ITEMS, results, strict=True):
                ids, ref = reference(model, tok, prompt, completion)
                assert list(result.token_ids) == ids
                assert_top_k_matches(result, ids, ref, K, tol)
            # top_k changes nothing else; without it no rows come back.
            plain = await client.score(ITEMS, return_tokens=True)
            for a, b in zip(results, plain, strict=True):
                assert b.top_logprobs is None
                assert np.allclose(a.logprobs, b.logprobs, atol=tol)
            # A smaller k gives the first columns of the larger.
            (small,) = await client.score(ITEMS[:1], top_k=3)
            np.testing.assert_array_equal(small.top_logprobs.token_ids,
                                          results[0].top_logprobs.token_ids[:, :3])
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.score(ITEMS[:1], top_k=K + 1)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(f"top_k: {K + 1} outside [0, {K}]")
    finally:
        await server.drain_and_stop()


@pytest.mark.slow
async def test_hf_top_k_score_equals_a_plain_forward(test_model_dir, hf_reference):
    await check_server("hf", test_model_dir, hf_reference, tol=1e-4)


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed")
async def test_vllm_top_k_score_equals_a_plain_forward(test_model_dir, hf_reference):
    await check_server("vllm", test_model_dir, hf_reference, tol=5e-3)
