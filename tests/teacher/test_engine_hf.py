"""The transformers engine's continuous batching: late requests join a running batch
between decoding steps, and what every sequence produces does not depend on it."""

from __future__ import annotations

import asyncio

import pytest

from teacher.serving.engine import EngineRequest, EngineSettings, load_engine
from teacher.serving.sampling import SamplingParams
from tests.teacher.helpers import one_sample

QUESTIONS = ["What is the capital of France?", "Name three primary colours.",
             "Count from one to five.", "What is 12 times 12?", "Say hello in Spanish."]


@pytest.fixture
async def engine(test_model_dir):
    eng = load_engine(EngineSettings(name="hf", dtype="float32", options={"max_batch_size": 4}),
                      str(test_model_dir), "smol")
    await eng.start()
    yield eng
    await eng.shutdown()


def _prompt(engine, text: str) -> list[int]:
    return list(engine.tokenizer.encode_prompt([{"role": "user", "content": text}]))


async def _run(engine, rid: str, prompt: list[int], options: SamplingParams,
               events: list[tuple[str, str]] | None = None) -> list[int]:
    tokens: list[int] = []
    async for out in engine.generate(EngineRequest(rid, prompt, options)):
        if events is not None and not tokens and out.tokens:
            events.append(("first", rid))
        tokens += [t.token_id for t in out.tokens]
    if events is not None:
        events.append(("done", rid))
    return tokens


@pytest.mark.slow
async def test_late_requests_join_the_running_batch(engine):
    greedy = one_sample(max_new_tokens=24, min_new_tokens=24)
    sampled = one_sample(temperature=0.8, top_p=0.9, seed=7, max_new_tokens=12)
    prompts = [_prompt(engine, q) for q in QUESTIONS]
    # Alone, one at a time: the reference outputs.
    alone = [await _run(engine, f"a{i}", p, greedy) for i, p in enumerate(prompts)]
    alone_sampled = await _run(engine, "s", prompts[0], sampled)

    # Now the first request starts alone and the others arrive while it decodes.
    events: list[tuple[str, str]] = []
    first = asyncio.create_task(_run(engine, "b0", prompts[0], greedy, events))
    while not events:
        await asyncio.sleep(0.01)
    late = [asyncio.create_task(_run(engine, f"b{i}", p, greedy, events))
            for i, p in enumerate(prompts[1:], start=1)]
    late_sampled = asyncio.create_task(_run(engine, "s2", prompts[0], sampled, events))
    together = [await first, *[await t for t in late]]
    assert together == alone  # greedy: the same tokens, batched or not
    assert await late_sampled == alone_sampled  # seeded: the same sample
    # Late arrivals got their first token before the first request finished: they
    # joined its batch instead of waiting for it (max_batch_size 4 lets 3 join).
    done_first = events.index(("done", "b0"))
    joined = [rid for kind, rid in events[:done_first] if kind == "first" and rid != "b0"]
    assert len(joined) >= 2, events
    assert engine.load().running == 0 and engine.load().waiting == 0


def test_common_prefix_leaves_each_prompt_a_token():
    from teacher.serving.engines.hf import _common_prefix

    assert _common_prefix([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert _common_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # identical: the last token stays own
    assert _common_prefix([[1, 2], [1, 2, 3, 4]]) == 1  # a prompt that prefixes another
    assert _common_prefix([[7, 1], [8, 1]]) == 0


@pytest.mark.slow
async def test_packed_prefill_with_shared_prefix_matches_solo_runs(engine):
    """Prompts arriving together are prefilled as one packed sequence, their shared
    prefix (here a few-shot system message) once: outputs equal one-at-a-time runs."""
    system = {"role": "system", "content": "Answer briefly. Examples: 2+2 is 4. "
              "The sky is blue. Paris is in France. Water boils at 100 C."}
    prompts = [list(engine.tokenizer.encode_prompt([system, {"role": "user", "content": q}]))
               for q in QUESTIONS[:3]]
    prompts.append(prompts[0])  # a second sample of the same prompt (n > 1)
    options = [one_sample(max_new_tokens=16, min_new_tokens=16),
               one_sample(max_new_tokens=16, min_new_tokens=16),
               one_sample(temperature=0.8, seed=3, max_new_tokens=16),
               one_sample(temperature=0.8, seed=4, max_new_tokens=16)]
    alone = [await _run(engine, f"a{i}", p, o)
             for i, (p, o) in enumerate(zip(prompts, options, strict=True))]

    packs: list[int] = []
    original = engine._prefill_packed

    def spy(rows, batch_prompts):
        packs.append(len(batch_prompts))
        return original(rows, batch_prompts)

    engine._prefill_packed = spy
    together = await asyncio.gather(*(_run(engine, f"b{i}", p, o) for i, (p, o)
                                      in enumerate(zip(prompts, options, strict=True))))
    assert packs == [4]  # all four prefilled in one packed pass
    from teacher.serving.engines.hf import _MIN_SHARED_PREFIX, _common_prefix
    assert _common_prefix(prompts) >= _MIN_SHARED_PREFIX  # the shared-prefix layout ran
    assert list(together) == alone
