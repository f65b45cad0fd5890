"""The ``best_of_n`` mode (teacher.distill.modes.best_of_n), over a scripted engine."""

from __future__ import annotations

from teacher.distill.modes import get_mode
from tests.teacher.test_modes import CORRECT, CORRECT_TOO, WRONG, ZEROSHOT, distill


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
