"""The ``trace`` mode (teacher.distill.modes.trace), over a scripted engine."""

from __future__ import annotations

from tests.teacher.test_modes import CORRECT, WRONG, ZEROSHOT, distill


async def test_trace_keeps_only_correct_rationales_by_default():
    record = await distill([WRONG, CORRECT], "trace", template=ZEROSHOT)
    assert [c.rejected_because for c in record.candidates] == ["wrong answer", ""]
    assert record.chosen_index == 1 and "correct candidate(s)" in record.reason


async def test_trace_may_choose_an_incorrect_rationale_when_asked():
    record = await distill([WRONG], "trace", template=ZEROSHOT, require_correct=False,
                           num_candidates=1)
    assert record.status == "accepted" and record.response == WRONG
    assert record.candidates[0].correct is False
    assert "of 1 usable candidate(s)" in record.reason


async def test_trace_defaults_to_the_few_shot_template():
    from teacher.core.tasks.gsm8k import GSM8K_COT_8SHOT
    from teacher.distill.modes import get_mode

    assert get_mode("trace").templates["gsm8k"] is GSM8K_COT_8SHOT
    assert get_mode("trace").default_num_candidates == 4
