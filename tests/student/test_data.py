"""Student data preparation: sources, id-based splits, subsets, STM, curriculum, configs.

Pure-Python tests (no model): fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from student import masking
from student.config import load_train_config
from student.data import (
    StudentError,
    TrainExample,
    answer_start,
    easy_to_hard,
    fingerprint,
    load_examples,
    split_examples,
    take_subset,
)
from teacher.core.config import ConfigError
from teacher.core.records import RecordError

REPO = Path(__file__).resolve().parents[2]


def record(i: int, **overrides) -> dict:
    a, b = i + 2, 3 * i + 1
    row = {"id": f"gsm8k/train/{i:06d}", "task": "gsm8k", "split": "train", "mode": "trace",
           "prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
           "question": f"What is {a} plus {b}?", "reference": f"{a} + {b} = {a + b}\n#### {a + b}",
           "target": str(a + b),
           "response": f"We add {a} and {b}: {a} + {b} = {a + b}.\n#### {a + b}",
           "status": "accepted", "response_nll": float(10 - i)}
    row.update(overrides)
    return row


def write_records(directory: Path, rows: list[dict], name: str = "shard-00000.jsonl") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def teacher_cfg(path: Path, *overrides: str):
    return load_train_config(None, ["data.source=teacher", f"data.path={path}", *overrides])


def examples(n: int) -> list[TrainExample]:
    return [TrainExample(f"t/train/{i:06d}", [{"role": "user", "content": str(i)}], f"r{i}")
            for i in range(n)]


# ---------------------------------------------------------------- sources


def test_teacher_records_choose_the_field_and_mode(tmp_path):
    rows = [record(i) for i in range(3)] + [record(0, mode="rewrite", response="other")]
    write_records(tmp_path / "out", rows)
    got = load_examples(teacher_cfg(tmp_path / "out", "data.mode=trace").data)
    assert [e.id for e in got] == [r["id"] for r in rows[:3]]
    assert got[1].response == rows[1]["response"] and got[1].nll == rows[1]["response_nll"]
    ref = load_examples(teacher_cfg(tmp_path / "out", "data.mode=trace",
                                    "data.field=reference").data)
    assert ref[2].response == rows[2]["reference"] and ref[2].nll is None
    with pytest.raises(RecordError, match="duplicate example id"):
        load_examples(teacher_cfg(tmp_path / "out").data)  # two modes of one example


def test_rejected_records_are_skipped(tmp_path):
    write_records(tmp_path / "out", [record(0, status="rejected", response=""), record(1)])
    got = load_examples(teacher_cfg(tmp_path / "out").data)
    assert [e.id for e in got] == ["gsm8k/train/000001"]


def test_ground_truth_source(data_dir):
    cfg = load_train_config(None, ["data.limit=3"])
    got = load_examples(cfg.data, data_dir)
    assert [e.id for e in got] == [f"gsm8k/train/{i:06d}" for i in range(3)]
    assert got[0].response.endswith("#### 72") and "<<" not in got[0].response
    assert got[0].prompt[-1]["role"] == "user"


def test_seeded_draw_is_reproducible_and_not_file_order(data_dir):
    first = load_examples(load_train_config(None, ["data.limit=8"]).data, data_dir)
    cfg = load_train_config(None, ["data.limit=8", "data.sample_seed=3"])
    drawn = load_examples(cfg.data, data_dir)
    again = load_examples(load_train_config(None, ["data.limit=8", "data.sample_seed=3"]).data,
                          data_dir)
    other = load_examples(load_train_config(None, ["data.limit=8", "data.sample_seed=4"]).data,
                          data_dir)
    ids = [e.id for e in drawn]
    assert ids == [e.id for e in again] and len(ids) == 8
    assert ids == sorted(ids)  # file order kept
    assert set(ids) != {e.id for e in first} and set(ids) != {e.id for e in other}
    # Nested in N: the 8 drawn are among the 16 drawn with the same seed.
    more = load_examples(load_train_config(None, ["data.limit=16", "data.sample_seed=3"]).data,
                         data_dir)
    assert set(ids) <= {e.id for e in more}


def test_sample_seed_draws_the_questions_the_student_draws(tmp_path, data_dir):
    from teacher.distill.job import GenerateConfig
    from teacher.distill.job import load_examples as job_examples

    def job(**settings) -> list[str]:
        config = GenerateConfig.from_settings(task="gsm8k", split="train", mode="trace",
                                              out=tmp_path, data_dir=data_dir, **settings)
        return [e.id for e in job_examples(config)]

    drawn = job(limit=6, sample_seed=11)
    assert drawn == job(limit=6, sample_seed=11) != job(limit=6)
    assert job(limit=6) == [f"gsm8k/train/{i:06d}" for i in range(6)]  # None: the first N
    gt = load_train_config(None, ["data.limit=6", "data.sample_seed=11"])
    assert [e.id for e in load_examples(gt.data, data_dir)] == drawn


def test_teacher_arms_draw_the_same_questions_as_ground_truth(tmp_path):
    # The same seed over a teacher directory draws the same ids as over the task
    # (records cover the split here); a rejected question is dropped, not replaced.
    from teacher.core.tasks import draw

    ids = [f"gsm8k/train/{i:06d}" for i in range(30)]
    want = draw(ids, 10, 7, id_of=str)
    rows = [record(i) for i in range(30)]
    rejected = want[2]
    rows[int(rejected[-6:])] = record(int(rejected[-6:]), status="rejected", response="")
    write_records(tmp_path / "out", rows)
    got = load_examples(teacher_cfg(tmp_path / "out", "data.limit=10",
                                    "data.sample_seed=7").data)
    assert [e.id for e in got] == [i for i in want if i != rejected]
    first = load_examples(teacher_cfg(tmp_path / "out", "data.limit=10").data)
    assert [e.id for e in first] == [i for i in ids if i != rejected][:10]  # today's: first N


def test_ids_file_keeps_only_the_listed_questions(tmp_path):
    write_records(tmp_path / "out", [record(i) for i in range(5)])
    (tmp_path / "ids.json").write_text(json.dumps(["gsm8k/train/000001", "gsm8k/train/000003"]))
    def load(name: str) -> list[TrainExample]:
        return load_examples(teacher_cfg(tmp_path / "out", f"data.ids_file={tmp_path / name}").data)

    assert [e.id for e in load("ids.json")] == ["gsm8k/train/000001", "gsm8k/train/000003"]
    with pytest.raises(StudentError, match=r"data\.ids_file: .*not found"):
        load("no.json")
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(StudentError, match="not a JSON list"):
        load("bad.json")


# ---------------------------------------------------------------- bad data


def test_record_without_the_chosen_field_names_file_and_line(tmp_path):
    write_records(tmp_path / "out", [record(0), record(1), record(2, custom="x")])
    with pytest.raises(RecordError, match=r"shard-00000\.jsonl:1: record has no field 'custom'"):
        load_examples(teacher_cfg(tmp_path / "out", "data.field=custom").data)


def test_missing_and_empty_datasets(tmp_path):
    with pytest.raises(StudentError, match=r"data\.path: teacher output directory .* does not"):
        load_examples(teacher_cfg(tmp_path / "nope").data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudentError, match=r"no \*\.jsonl shards"):
        load_examples(teacher_cfg(tmp_path / "empty").data)
    write_records(tmp_path / "blank", [])
    with pytest.raises(StudentError, match="no training examples"):
        load_examples(teacher_cfg(tmp_path / "blank").data)


def test_unknown_config_keys_suggest_the_right_one():
    with pytest.raises(ConfigError, match="did you mean 'token_mask_ppl'"):
        load_train_config(None, ["token_mask_pp=2.5"])
    with pytest.raises(ConfigError, match="did you mean 'val_size'"):
        load_train_config(None, ["data.val_sise=3"])
    with pytest.raises(ConfigError, match=r"data\.path"):
        load_train_config(None, ["data.source=teacher"])


def test_shipped_configs_load_and_name_their_command():
    paths = sorted((REPO / "configs" / "student").glob("*.yaml"))
    assert paths
    for path in paths:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and "distill-student train" in first, path
        load_train_config(path)


# ---------------------------------------------------------------- split, subset


def test_validation_split_is_by_id_and_disjoint():
    exs = examples(50)
    train, val = split_examples(exs, 0.2, seed=1)
    assert len(val) == 10 and len(train) == 40
    assert not {e.id for e in train} & {e.id for e in val}
    # The same id lands on the same side whatever else is in the pool.
    _, val2 = split_examples(list(reversed(exs)) + examples(0), 0.2, seed=1)
    assert {e.id for e in val2} == {e.id for e in val}
    _, val3 = split_examples(exs, 0.2, seed=2)
    assert {e.id for e in val3} != {e.id for e in val}
    with pytest.raises(StudentError, match="leaves no training examples"):
        split_examples(examples(2), 2, seed=0)


def test_subsets_for_saturation_curves():
    train = examples(40)
    quarter = take_subset(train, 0.25, seed=3)
    assert len(quarter) == 10 and quarter == take_subset(train, 0.25, seed=3)
    assert len(take_subset(train, 20, seed=3)) == 20
    assert take_subset(train, 1.0, seed=3) == train
    assert take_subset(train, 0.25, seed=4) != quarter
    assert fingerprint(quarter, []) != fingerprint(train, [])


# ---------------------------------------------------------------- STM and curriculum


def test_stm_masks_exactly_the_tokens_above_the_threshold():
    labels = [-100, -100, 11, 12, 13, 14, 15, -100]
    # perplexities exp(-lp): 1.0, 2.49, 2.51, 10, 2.5 (not above: kept)
    logprobs = [0.0, -math.log(2.49), -math.log(2.51), -math.log(10.0), -math.log(2.5) + 1e-9]
    got = masking.mask_high_perplexity(labels, logprobs, 2.5)
    assert got == [-100, -100, 11, 12, -100, -100, 15, -100]
    with pytest.raises(ValueError, match="4 logprobs for 5 target tokens"):
        masking.mask_high_perplexity(labels, logprobs[:4], 2.5)


def test_curriculum_orders_by_recorded_nll():
    ids = ["a", "b", "c", "d"]
    assert easy_to_hard(ids, {"a": 3.0, "b": 0.5, "c": 3.0, "d": 1.0}) == [1, 3, 0, 2]
    with pytest.raises(StudentError, match="no NLL"):
        easy_to_hard(ids, {"a": 1.0})


def test_answer_mask_splits_rationale_from_answer():
    response = "We add 2 and 1: 3.\n#### 3"
    start = answer_start(response)
    assert response[start:] == "#### 3"
    chars = [*response, "<eos>"]  # one "token" per character

    def decode(ids):
        return "".join(chars[i] for i in ids)
    mask = masking.answer_mask(list(range(len(chars))), response, start, decode)
    assert mask == [0] * start + [1] * (len(chars) - start)
