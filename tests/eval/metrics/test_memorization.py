"""The memorization metric: copy scores on planted copies, the half-response split,
and its rows on a stand-in model."""

from __future__ import annotations

import pytest

from eval.metrics.memorization import (
    Memorization,
    MemorizationData,
    MemorizationSettings,
    longest_common_run,
    rouge_l,
    score_copy,
    split_response,
    words,
)
from teacher.core.rundir import TrainExample
from tests.eval.metrics.fakes import FakeModel

RESPONSE = "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72"


def test_memorization_on_a_planted_copy():
    s = score_copy(RESPONSE, RESPONSE)
    assert s["exact_match"] == 1.0 and s["rouge_l"] == pytest.approx(1.0)
    assert s["rouge_l_above"] == 1.0 and s["lcs_share"] == 1.0
    assert s["lcs_run"] == len(words(RESPONSE))
    # Whitespace differences still count as an exact copy.
    assert score_copy("  " + RESPONSE.replace("\n", " ") + "\n", RESPONSE)["exact_match"] == 1.0


def test_memorization_on_near_and_far_outputs():
    near = RESPONSE.replace("May", "June")  # one word changed
    s = score_copy(near, RESPONSE)
    assert s["exact_match"] == 0.0 and s["rouge_l_above"] == 1.0 and s["rouge_l"] > 0.9
    far = score_copy("I do not know how many clips she sold.", RESPONSE)
    assert far["rouge_l_above"] == 0.0 and far["exact_match"] == 0.0
    assert far["lcs_run"] == 2.0  # "she sold"
    assert score_copy("", RESPONSE)["rouge_l"] == 0.0


def test_longest_common_run_and_rouge_by_hand():
    assert longest_common_run(["a", "b", "c", "d", "e"], ["x", "b", "c", "d", "y"]) == 3
    assert longest_common_run([], ["a"]) == 0
    # LCS "the cat sat" (3) of 3 and 4 tokens: P=1, R=3/4 -> F1 = 6/7.
    assert rouge_l("the cat sat", "The cat sat on") == pytest.approx(6 / 7)


def test_split_response_halves_by_tokens():
    head, tail = split_response([1, 2, 3, 4, 5], lambda ids: ",".join(map(str, ids)))
    assert (head, tail) == ("1,2", "3,4,5")


async def test_memorization_rows_for_both_settings_and_splits():
    prompt = [{"role": "user", "content": "How many clips?"}]
    data = MemorizationData([TrainExample("t0", prompt, "a b c d")],
                            [TrainExample("v0", prompt, "w x y z")])
    metric = Memorization(MemorizationSettings(n=1))

    def copy_of_the_trained(p):  # completes the trained response, whatever the prompt
        return "c d" if isinstance(p, str) else "a b c d"

    model = FakeModel(copy_of_the_trained)
    rows = await metric.compute(model, data, data_dir=None)
    assert [(r["setting"], r["split"]) for r in rows] == [
        ("loss", "train"), ("loss", "control"),
        ("question", "train"), ("question", "control"),
        ("half_response", "train"), ("half_response", "control")]
    # By loss: the stand-in's log-probability is -1 per word, so the mean is -1.
    assert [(r["logprob"], r["tokens"]) for r in rows[:2]] == [(-1.0, 4), (-1.0, 4)]
    assert [r["exact_match"] for r in rows[2:]] == [1.0, 0.0, 1.0, 0.0]
    # The half-response prompt: the chat prompt, then the first half by tokens.
    assert model.prompts[2] == "user: How many clips?\nassistant: a b"
    assert metric.count(data) == 4
    train_terms = [t.path for t in metric.summary()]
    assert ("memorization_increase", "question", "rouge_l_above") in train_terms
    assert ("memorization_increase", "loss", "logprob") in train_terms
    assert all(t.measure.where[1] == ("split", "train") for t in metric.summary())
