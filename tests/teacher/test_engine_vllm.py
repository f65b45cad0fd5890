"""The vLLM engine against a direct transformers fp32 computation.

Needs vLLM and a prepared model directory: ``$DISTILL_TEST_MODEL`` or
``~/.cache/distill/models/smollm2-135m-instruct``. One engine serves the whole
module, so its start-up (about 20 s on CPU) is paid once.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import pytest_asyncio

pytest.importorskip("vllm")

from teacher.serving.engine import (
    EngineLoad,
    EngineOutput,
    EngineRequest,
    EngineSettings,
    ScoreInput,
    load_engine,
)
from teacher.serving.engines.vllm import VLLMEngine
from teacher.serving.errors import EngineUnavailable, InvalidArgument
from teacher.serving.sampling import SamplingParams
from tests.teacher.helpers import one_sample

pytestmark = pytest.mark.vllm

MODEL_DIR = Path(
    os.environ.get("DISTILL_TEST_MODEL")
    or Path.home() / ".cache/distill/models/smollm2-135m-instruct"
)
if not (MODEL_DIR / "config.json").is_file():
    pytest.skip(
        f"no prepared test model at {MODEL_DIR} (set DISTILL_TEST_MODEL to a safetensors dir)",
        allow_module_level=True,
    )

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "List three prime numbers."}],
]
TEXTS = ["The quick brown fox", "def fibonacci(n):"]
TOL = 1e-3


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine():
    eng = load_engine(EngineSettings(name="vllm", max_model_len=1024, seed=0), str(MODEL_DIR))
    assert isinstance(eng, VLLMEngine)
    t0 = time.perf_counter()
    await eng.start()
    print(f"\nvLLM engine start-up: {time.perf_counter() - t0:.1f} s")
    yield eng
    await eng.shutdown()


@pytest.fixture(scope="module")
def hf():
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    model.eval()
    return model


@pytest.fixture(scope="module")
def prompts(engine):
    tok = engine.tokenizer
    return [tok.encode_prompt(c) for c in CHATS] + [tok.encode_prompt(t) for t in TEXTS]


def hf_logprobs(hf, ids: list[int]):
    """log_softmax of the fp32 logits: row i is the distribution of token i + 1."""
    import torch

    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


async def collect(engine, request: EngineRequest) -> list[EngineOutput]:
    return [out async for out in engine.generate(request)]


def tokens_of(outputs: list[EngineOutput]) -> list[int]:
    return [step.token_id for out in outputs for step in out.tokens]


async def test_info(engine):
    info = engine.info()
    assert info.engine == "vllm"
    assert info.engine_version
    assert info.device == "cpu"
    assert info.dtype == "float32"
    assert info.name == MODEL_DIR.name
    assert info.source == str(MODEL_DIR)
    assert info.context_length == 1024
    assert info.vocab_size >= len(engine.tokenizer.hf)
    assert engine.tokenizer.hf.eos_token_id in info.eos_token_ids


async def test_greedy_matches_transformers(engine, hf, prompts):
    import torch

    max_new = 24
    requests = [
        EngineRequest(f"greedy-{i}", p, one_sample(max_new_tokens=max_new))
        for i, p in enumerate(prompts)
    ]
    t0 = time.perf_counter()
    results = await asyncio.gather(*(collect(engine, r) for r in requests))
    elapsed = time.perf_counter() - t0
    total = sum(len(tokens_of(r)) for r in results)
    print(f"\nvLLM greedy batch of {len(requests)}: {total} tokens, {total / elapsed:.1f} tok/s")

    eos = set(engine.info().eos_token_ids)
    for prompt, outputs in zip(prompts, results, strict=True):
        got = tokens_of(outputs)
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max_new,
                eos_token_id=sorted(eos),
                pad_token_id=engine.tokenizer.hf.pad_token_id or 0,
            )[0, len(prompt) :].tolist()
        assert got == ref
        finish = outputs[-1].finish
        assert finish == ("eos" if got[-1] in eos else "length")
        assert all(o.finish is None for o in outputs[:-1])


async def test_generation_stops_at_eos(engine, prompts):
    outputs = await collect(
        engine, EngineRequest("eos-0", prompts[0], one_sample(max_new_tokens=200))
    )
    got = tokens_of(outputs)
    assert outputs[-1].finish == "eos"
    assert got[-1] in engine.info().eos_token_ids
    assert len(got) < 200


async def test_min_tokens_suppresses_eos(engine, prompts):
    short = tokens_of(
        await collect(
            engine, EngineRequest("min-a", prompts[0], one_sample(max_new_tokens=200))
        )
    )
    floor = len(short) + 5
    outputs = await collect(
        engine,
        EngineRequest(
            "min-b", prompts[0], one_sample(max_new_tokens=200, min_new_tokens=floor)
        ),
    )
    got = tokens_of(outputs)
    eos = set(engine.info().eos_token_ids)
    assert len(got) >= floor
    assert not eos.intersection(got[: floor - 1])


async def test_logprobs_match_transformers(engine, hf, prompts):
    top_n = 5
    for i, prompt in enumerate(prompts[:3]):
        # Sampling at a low temperature: the returned logprobs must still be the raw ones.
        opts = one_sample(
            temperature=0.7, seed=11, max_new_tokens=16, logprobs=True, top_logprobs=top_n
        )
        outputs = await collect(engine, EngineRequest(f"lp-{i}", prompt, opts))
        steps = [s for o in outputs for s in o.tokens]
        ids = list(prompt) + [s.token_id for s in steps]
        ref = hf_logprobs(hf, ids)
        for j, step in enumerate(steps):
            row = ref[len(prompt) + j - 1]
            assert step.logprob == pytest.approx(row[step.token_id].item(), abs=TOL)
            assert len(step.top) == top_n
            lps = [lp for _, lp in step.top]
            assert lps == sorted(lps, reverse=True)
            ref_top = row.topk(top_n)
            for (tok, lp), ref_lp in zip(step.top, ref_top.values.tolist(), strict=True):
                assert lp == pytest.approx(ref_lp, abs=TOL)
                assert lp == pytest.approx(row[tok].item(), abs=TOL)


async def test_logprob_only_without_alternatives(engine, prompts):
    opts = one_sample(max_new_tokens=4, logprobs=True)
    steps = [
        s
        for o in await collect(engine, EngineRequest("lp-only", prompts[0], opts))
        for s in o.tokens
    ]
    assert steps and all(s.logprob is not None and s.logprob <= 0 and s.top == () for s in steps)
    plain = [
        s
        for o in await collect(
            engine, EngineRequest("no-lp", prompts[0], one_sample(max_new_tokens=4))
        )
        for s in o.tokens
    ]
    assert all(s.logprob is None for s in plain)


async def test_sampling_seeds(engine, prompts):
    def opts(seed: int) -> SamplingParams:
        return one_sample(temperature=1.0, top_p=0.95, top_k=50, seed=seed, max_new_tokens=32)

    a, b, c = await asyncio.gather(
        collect(engine, EngineRequest("seed-a", prompts[1], opts(1))),
        collect(engine, EngineRequest("seed-b", prompts[1], opts(1))),
        collect(engine, EngineRequest("seed-c", prompts[1], opts(2))),
    )
    assert tokens_of(a) == tokens_of(b)
    assert tokens_of(a) != tokens_of(c)


async def test_seeded_sampling_over_long_prompts_survives_batching(engine):
    """More prompt tokens than one scheduler step holds, every request seeded: on CPU a
    prefill split across steps used to kill the EngineCore ("CPU Generator does not
    use offset"); whole-prompt scheduling keeps it alive and the seeds reproducible."""
    tok = engine.tokenizer
    long_prompt = tok.encode_prompt([{"role": "user", "content": "Repeat after me: "
                                      + "the tide keeps its time, " * 60}])
    assert 300 < len(long_prompt) < 1000
    n = 8192 // len(long_prompt) + 4  # the prompts overflow the 8192-token step budget

    def opts(i: int) -> SamplingParams:
        return one_sample(temperature=0.8, seed=i, max_new_tokens=4)

    outs = await asyncio.gather(*(collect(engine, EngineRequest(f"long-{i}", long_prompt,
                                                                 opts(i % 2)))
                                  for i in range(n)))
    assert all(o[-1].finish == "length" for o in outs)
    assert len({tuple(tokens_of(o)) for o in outs[0::2]}) == 1  # same seed, same sample


async def test_score_matches_transformers(engine, hf, prompts):
    tok = engine.tokenizer
    completions = [
        "The capital of France is Paris.",
        "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time.",
        "2, 3 and 5.",
        " jumps over the lazy dog.",
        "\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)",
    ]
    items = [
        ScoreInput(p, tok.encode_completion(c)) for p, c in zip(prompts, completions, strict=True)
    ]
    t0 = time.perf_counter()
    scores = [out.logprobs for out in await engine.score(items)]
    print(f"\nvLLM score of {len(items)} items: {time.perf_counter() - t0:.2f} s")
    assert len(scores) == len(items)
    for item, got in zip(items, scores, strict=True):
        ids = list(item.prompt_ids) + list(item.completion_ids)
        ref = hf_logprobs(hf, ids)
        start = len(item.prompt_ids)
        want = [ref[start + j - 1, t].item() for j, t in enumerate(item.completion_ids)]
        assert len(got) == len(want)
        nll_got = -sum(got) / len(got)
        nll_want = -sum(want) / len(want)
        assert nll_got == pytest.approx(nll_want, abs=TOL)
        assert got == pytest.approx(want, abs=5 * TOL)
    (empty,) = await engine.score([ScoreInput(prompts[0], [])])
    assert empty.logprobs == [] and empty.top is None
    assert engine.load() == EngineLoad(0, 0)


async def wait_idle(engine, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while engine._llm.get_num_unfinished_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def test_closing_the_stream_aborts(engine, prompts):
    opts = one_sample(max_new_tokens=400, min_new_tokens=400)
    gen = engine.generate(EngineRequest("close-early", prompts[1], opts))
    first = asyncio.create_task(anext(gen))
    await asyncio.sleep(0)  # submitted, no output yet
    assert engine.load() == EngineLoad(running=0, waiting=1)
    await first
    await anext(gen)
    assert engine.load() == EngineLoad(running=1, waiting=0)
    await gen.aclose()
    assert engine.load() == EngineLoad(0, 0)
    await wait_idle(engine)
    assert engine._llm.get_num_unfinished_requests() == 0


async def test_cancelling_the_consumer_aborts(engine, prompts):
    opts = one_sample(max_new_tokens=400, min_new_tokens=400)
    first = asyncio.Event()

    async def consume():
        async for _ in engine.generate(EngineRequest("cancel-me", prompts[1], opts)):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.load() == EngineLoad(0, 0)
    await wait_idle(engine)
    assert engine._llm.get_num_unfinished_requests() == 0


async def test_abort_by_id(engine, prompts):
    opts = one_sample(max_new_tokens=400, min_new_tokens=400)
    outputs = []
    async for out in engine.generate(EngineRequest("abort-me", prompts[1], opts)):
        outputs.append(out)
        if len(outputs) == 2:
            await engine.abort("abort-me")
    assert outputs[-1].finish == "abort"
    assert len(tokens_of(outputs)) < 400
    assert engine.load() == EngineLoad(0, 0)
    await engine.abort("no-such-request")  # unknown ids are ignored


async def test_single_stream_throughput(engine, prompts):
    opts = one_sample(max_new_tokens=64, min_new_tokens=64)
    t0 = time.perf_counter()
    got = tokens_of(await collect(engine, EngineRequest("speed", prompts[0], opts)))
    elapsed = time.perf_counter() - t0
    assert len(got) == 64
    print(f"\nvLLM batch-1 decode: {len(got) / elapsed:.1f} tok/s")


async def test_too_long_prompts_are_invalid(engine, prompts):
    long_prompt = list(prompts[0]) * 200
    with pytest.raises(InvalidArgument):
        await collect(engine, EngineRequest("too-long", long_prompt, one_sample()))
    with pytest.raises(InvalidArgument):
        await engine.score([ScoreInput(long_prompt, [1, 2, 3])])
    assert engine.load() == EngineLoad(0, 0)


async def test_not_started_is_unavailable():
    eng = VLLMEngine(EngineSettings(name="vllm"), str(MODEL_DIR))
    with pytest.raises(EngineUnavailable):
        eng.info()
    with pytest.raises(EngineUnavailable):
        await collect(eng, EngineRequest("x", [1, 2], one_sample()))
    await eng.abort("x")
    await eng.shutdown()


# Keep last: it kills the module's shared engine.
async def test_engine_death_is_unavailable(engine, prompts):
    psutil = pytest.importorskip("psutil")

    opts = one_sample(max_new_tokens=400, min_new_tokens=400)
    gen = engine.generate(EngineRequest("doomed", prompts[1], opts))
    await anext(gen)
    cores = [p for p in psutil.Process().children(recursive=True) if "EngineCore" in p.name()]
    assert len(cores) == 1
    cores[0].kill()
    with pytest.raises(EngineUnavailable):
        async for _ in gen:
            pass
    with pytest.raises(EngineUnavailable):
        await collect(engine, EngineRequest("after", prompts[0], one_sample()))
    with pytest.raises(EngineUnavailable):
        await engine.score([ScoreInput(prompts[0], [1])])
    assert engine.load() == EngineLoad(0, 0)
