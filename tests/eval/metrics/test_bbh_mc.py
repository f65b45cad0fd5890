"""The bbh_mc metric: options per subtask against the data, lm-eval's argmax rule, the
prompt, rows and measures on a stand-in model."""

from __future__ import annotations

import re

import pytest

from eval.metrics.bbh_mc import (
    FREE_FORM,
    MULTIPLE_CHOICE,
    WORD_OPTIONS,
    BbhMc,
    BbhMcSettings,
    choose,
    item_options,
    mc_subtasks,
    scorable,
)
from teacher.core.config import ConfigError
from teacher.core.tasks import BBH_SUBTASKS, Example, get_task
from tests.eval.metrics.fakes import FakeModel

# Items of the data whose options are malformed (split at a comma, truncated).
DATA_ERRORS = {"bbh/movie_recommendation/test/000163", "bbh/ruin_names/test/000099",
               "bbh/ruin_names/test/000144",
               "bbh/snarks/test/000088"}


def test_the_subtasks_split_into_multiple_choice_and_free_form():
    assert set(MULTIPLE_CHOICE) | set(FREE_FORM) == set(BBH_SUBTASKS)
    assert not set(MULTIPLE_CHOICE) & set(FREE_FORM) and len(MULTIPLE_CHOICE) == 23
    assert set(WORD_OPTIONS) <= set(MULTIPLE_CHOICE)


@pytest.mark.parametrize("subtask", MULTIPLE_CHOICE)
def test_every_item_has_options_and_its_target_among_them(subtask, data_dir):
    items = get_task(f"bbh/{subtask}").load("test", data_dir)
    bad = {ex.id for ex in items if not scorable(subtask, ex)}
    assert bad == {i for i in DATA_ERRORS if i.startswith(f"bbh/{subtask}/")}
    for ex in items:
        if ex.id in bad:
            continue
        options = item_options(subtask, ex)
        assert len(options) >= 2 and ex.target in options
        assert len(set(options)) == len(options)
    if subtask in WORD_OPTIONS:  # the answer words are exactly the targets the data has
        assert {ex.target for ex in items} == set(WORD_OPTIONS[subtask])
    else:  # lettered options: labels A, B, ... in order
        for ex in items[:20]:
            options = item_options(subtask, ex)
            assert options == [f"({chr(65 + i)})" for i in range(len(options))]


@pytest.mark.parametrize("subtask", FREE_FORM)
def test_free_form_subtasks_have_no_option_set(subtask, data_dir):
    (ex,) = get_task(f"bbh/{subtask}").load("test", data_dir, 1)
    with pytest.raises(ValueError, match="free-form"):
        item_options(subtask, ex)
    assert len({x.target for x in get_task(f"bbh/{subtask}").load("test", data_dir)}) > 10


def test_argmax_rule_sum_and_per_character():
    options = ["valid", "invalid"]  # 5 and 7 characters
    # Summed: "valid" (-4.0 > -4.2); per character: "invalid" (-0.6 > -0.8).
    assert choose([-4.0, -4.2], options) == (0, 1)
    assert choose([-6.0, -4.0], options) == (1, 1)
    assert choose([-2.0, -3.5], options) == (0, 0)  # -0.4 > -0.5
    assert choose([-2.0, -2.0], ["(A)", "(B)"]) == (0, 0)  # ties: the first, as np.argmax
    with pytest.raises(ValueError):
        choose([-1.0], options)


def test_prompt_is_lm_eval_bbh_zeroshot(data_dir):
    task = get_task("bbh/sports_understanding")
    (ex,) = task.load("test", data_dir, 1)
    prompt = task.prompt(ex, "bbh-zeroshot", data_dir=data_dir)
    assert prompt == ("Determine whether an artificially constructed sentence relating to "
                      f"sports is plausible or not.\n\nQ: {ex.question}\nA:")


def test_settings_checks():
    assert mc_subtasks(["all"]) == list(MULTIPLE_CHOICE) == mc_subtasks(None)
    with pytest.raises(ConfigError, match=r"bbh_mc\.subtasks: 'word_sorting' is free-form"):
        mc_subtasks(["word_sorting"])
    with pytest.raises(ConfigError, match=r"did you mean 'navigate'"):
        mc_subtasks(["navigat"])
    with pytest.raises(ConfigError, match=r"bbh_mc\.template"):
        BbhMc(BbhMcSettings(template="bbh-cot-3shot")).validate()
    with pytest.raises(ConfigError, match=r"bbh_mc\.limit"):
        BbhMc(BbhMcSettings(limit=0)).validate()


class _Prefers:
    """Scores one option best by its text: NLL 1.0 for ``best``, 2.0 for the others."""

    def __init__(self, best: str) -> None:
        self.best = best
        self.pairs: list[tuple[str, str]] = []

    async def score(self, pairs):
        self.pairs += list(pairs)
        return [(1.0 if c == " " + self.best else 2.0, 1) for _, c in pairs]


async def test_rows_measures_and_ids(data_dir):
    metric = BbhMc(BbhMcSettings(subtasks=["navigate", "date_understanding"], limit=3))
    data = metric.load(None, data_dir)
    assert [sub for sub, _ in data] == ["navigate"] * 3 + ["date_understanding"] * 3
    model = _Prefers("Yes")
    rows = await metric.compute(model, data, data_dir=data_dir)
    assert [r["id"] for r in rows] == [ex.id for _, ex in data]  # the task's ids, in order
    # Every option of every item after its prompt, the prompt ending in "A:".
    assert len(model.pairs) == sum(len(r["options"]) for r in rows)
    assert all(p.endswith("\nA:") and c.startswith(" ") for p, c in model.pairs)
    for r, (_, ex) in zip(rows, data, strict=True):
        if r["subtask"] == "navigate":
            assert r["answer"] == "Yes" and r["acc"] == float(ex.target == "Yes")
        else:  # all options tie: the first, (A)
            assert r["answer"] == "(A)" and r["acc"] == float(ex.target == "(A)")
        assert r["loglikelihoods"][r["options"].index(r["answer"])] == max(r["loglikelihoods"])
    names = [m.name for m in metric.measures()]
    assert names == ["bbh_mc/acc", "bbh_mc/acc_norm", "bbh_mc/navigate/acc",
                     "bbh_mc/date_understanding/acc"]
    per = {m.name: m.aggregate_fn()(m.select(rows)) for m in metric.measures()}
    assert per["bbh_mc/acc"] == pytest.approx(sum(r["acc"] for r in rows) / 6)
    assert all(m.exact and m.higher_is_better for m in metric.measures())
    (term,) = metric.summary()
    assert term.path == ("forgetting", "bbh_mc") and term.measure.name == "bbh_mc/acc"
    assert "free-form subtasks skipped: dyck_languages" in metric.measures()[0].description


async def test_limit_counts_well_formed_items(data_dir):
    metric = BbhMc(BbhMcSettings(subtasks=["snarks"], limit=None))
    ids = [ex.id for _, ex in metric.load(None, data_dir)]
    assert "bbh/snarks/test/000088" not in ids and len(ids) == 177
    rows = await metric.compute(FakeModel(), metric.load(None, data_dir)[:2], data_dir=data_dir)
    assert all(re.fullmatch(r"\([AB]\)", r["answer"]) for r in rows)


def test_example_type_round_trip():
    ex = Example("bbh/navigate/test/000000", "bbh/navigate", "test", "q", "Yes", "Yes")
    assert item_options("navigate", ex) == ["Yes", "No"] and scorable("navigate", ex)
