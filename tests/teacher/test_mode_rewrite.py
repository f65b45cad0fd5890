"""The ``rewrite`` mode (teacher.distill.modes.rewrite), over a scripted engine."""

from __future__ import annotations

import pytest

from teacher.serving.errors import InvalidArgument
from teacher.serving.sampling import SamplingParams
from tests.teacher.helpers import scripted_service
from tests.teacher.test_modes import CORRECT, EXAMPLE, distill

GREEDY = SamplingParams(seed=0)


async def test_rewrite_shows_the_reference_and_rejects_leaks():
    leak = "Using the reference answer as a guide, 1 + 2 = 3 apples.\n#### 3"
    record = await distill([leak], "rewrite", sampling=GREEDY)
    assert record.candidates[0].rejected_because == "template leak: 'the reference'"
    assert record.status == "fell_back"
    assert record.provenance["template"].startswith("gsm8k-sdft-rewrite@")


async def test_rewrite_prompt_holds_the_question_and_the_reference():
    from teacher.distill.modes import DistillOptions, distill_example

    service = await scripted_service([CORRECT])
    record = await distill_example(service, EXAMPLE, DistillOptions(mode="rewrite",
                                                                    sampling=GREEDY))
    assert record.status == "accepted" and record.response == CORRECT
    (request,) = service.hosts["teacher"].engine.requests
    prompt = service.hosts["teacher"].engine.tokenizer.decode(request.prompt_ids)
    assert EXAMPLE.question in prompt and "1 + 2 = 3 apples" in prompt


async def test_rewrite_needs_a_rewrite_template():
    with pytest.raises(InvalidArgument, match=r"^template: .* is not a rewrite template"):
        await distill([CORRECT], "rewrite", sampling=GREEDY, template="gsm8k-cot-zeroshot")
