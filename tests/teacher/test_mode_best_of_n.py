"""The ``best_of_n`` mode (teacher.distill.modes.best_of_n), over a scripted engine:
what it chooses, and the prompt it samples the student on (the one it trains on)."""

from __future__ import annotations

import pytest

from teacher.core.tasks import Example, get_task
from teacher.core.tasks.gsm8k import GSM8K_COT_ZEROSHOT
from teacher.distill.modes import DistillOptions, distill_example, get_mode
from teacher.serving.engine import ScoreInput
from teacher.serving.errors import InvalidArgument
from teacher.serving.sampling import SamplingParams
from teacher.serving.service import Limits, ModelHost, TeacherService
from tests.teacher.helpers import CharTokenizer, ScriptedEngine
from tests.teacher.test_modes import CORRECT, CORRECT_TOO, EXAMPLE, WRONG, ZEROSHOT, distill


async def test_best_of_n_never_chooses_an_incorrect_answer():
    record = await distill([WRONG], "best-of-n", template=ZEROSHOT, require_correct=False,
                           num_candidates=1)
    assert record.mode == "best_of_n" and record.status == "fell_back"


async def test_best_of_n_scores_every_sample_and_keeps_the_least_surprising():
    record = await distill([CORRECT, CORRECT_TOO], "best_of_n", template=ZEROSHOT)
    assert all(c.perplexity and c.num_tokens for c in record.candidates)
    assert record.candidates[record.chosen_index].perplexity == min(
        c.perplexity for c in record.candidates)
    assert record.provenance["sampling"]["n"] == 2
    assert get_mode("best_of_n").default_num_candidates == 4


# ---------------------------------------------------------------- the prompt it samples

# The task's zero-shot training prompt for EXAMPLE, written out (not rendered by the
# code under test), as the scripted tokenizer's chat template renders one user turn.
TRAINING_PROMPT = (
    "<user>Tom has 1 apple and buys 2 more. How many apples does he have?\n\n"
    "Solve the problem step by step. Then write the final answer on its own last line "
    'in the form "#### <number>", using only digits (no units, no commas).\n<assistant>'
)


class RecordingEngine(ScriptedEngine):
    """The scripted engine, keeping what it was asked to score."""

    def __init__(self, script):
        super().__init__(script)
        self.scored: list[ScoreInput] = []

    async def score(self, items, top_k=0):
        self.scored.extend(items)
        return await super().score(items, top_k)


async def _distill_recorded(example: Example, script, **options):
    engine = RecordingEngine(script)
    service = TeacherService([ModelHost("teacher", engine, 64)], Limits())
    await service.start()
    options = {"num_candidates": len(script),
               "sampling": SamplingParams(temperature=0.75, seed=0), **options}
    record = await distill_example(service, example, DistillOptions(mode="best_of_n",
                                                                    **options), "rid")
    return record, engine


def _text(ids) -> str:
    return "".join(chr(i) for i in ids)  # the scripted tokenizer: one token per character


async def test_best_of_n_samples_the_student_on_its_zero_shot_training_prompt():
    # No template given: the mode's default, which is the prompt the student trains on.
    record, engine = await _distill_recorded(EXAMPLE, [CORRECT, CORRECT_TOO])
    sent = {_text(r.prompt_ids) for r in engine.requests}
    assert sent == {TRAINING_PROMPT}  # both samples, token for token
    assert "Q: There are 15 trees" not in TRAINING_PROMPT  # not lm-eval's 8-shot prompt
    # The record's prompt (what student.data trains on) is that prompt ...
    assert CharTokenizer().apply_chat_template(record.prompt) == TRAINING_PROMPT
    task = get_task("gsm8k")
    assert record.prompt == task.prompt(EXAMPLE)  # = the ground-truth arm's training prompt
    # ... and every candidate and the reference are scored given the same tokens.
    assert [_text(s.prompt_ids) for s in engine.scored] == [TRAINING_PROMPT] * 3
    assert [_text(s.completion_ids) for s in engine.scored] == [CORRECT, CORRECT_TOO,
                                                                 record.reference]
    assert record.status == "accepted"
    assert record.provenance["template"] == "gsm8k-cot-zeroshot@v1"
    assert record.provenance["prompt_template"] == "gsm8k-cot-zeroshot@v1"
    assert record.provenance["template_digest"] == GSM8K_COT_ZEROSHOT.digest
    # The zero-shot template's budget and stops, not the 8-shot one's "Q:" stop / 256.
    assert record.provenance["sampling"]["max_new_tokens"] == 512
    assert record.provenance["sampling"]["stop"] == []


async def test_best_of_n_on_bbh_samples_the_bbh_zero_shot_prompt(data_dir):
    task = get_task("bbh/boolean_expressions")
    example = task.load("test", data_dir, 1)[0]
    answer = f"Evaluate it step by step, one operator at a time. So the answer is {example.target}."
    record, engine = await _distill_recorded(example, [answer])
    (request,) = engine.requests
    assert _text(request.prompt_ids) == CharTokenizer().apply_chat_template(
        task.prompt(example, task.zeroshot_template))
    assert _text(request.prompt_ids).startswith(f"<user>{example.question}\n\nThink step by step.")
    assert record.provenance["template"] == record.provenance["prompt_template"] == (
        "bbh-cot-zeroshot@v1")
    assert record.status == "accepted"


@pytest.mark.parametrize("template", ["gsm8k-cot-8shot", "gsm8k-cot-boxed"])
async def test_best_of_n_refuses_a_prompt_the_student_does_not_train_on(template):
    with pytest.raises(InvalidArgument, match=rf"^template: {template}@v1: best_of_n samples "
                                              r"the student on the prompt it trains on"):
        await _distill_recorded(EXAMPLE, [CORRECT], template=template)


def test_best_of_n_templates_are_the_tasks_zero_shot_templates():
    mode = get_mode("best_of_n")
    for name in ("gsm8k", "bbh/boolean_expressions"):
        task = get_task(name)
        assert mode.template(task, "") is task.zeroshot_template
    assert get_mode("trace").template(get_task("gsm8k"), "").key == "gsm8k-cot-8shot@v1"
