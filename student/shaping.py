"""Per-token and per-example shaping of the tokenized training data.

The teacher's top-k rows (``kd``, ``student.kd_data``), answer masks (for
``rationale_weight``), Selective Token Masking (``token_mask_ppl``) and the curriculum
order (``curriculum``) work on the dataset TRL has tokenized; the
base-model scores STM and the curriculum need are computed once and cached
(``SCORES_CACHE``, keyed by base model and token ids).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from student import masking
from student.config import TrainConfig
from student.data import answer_start, easy_to_hard
from student.kd_data import KDCollator, TeacherTopK, attach_topk
from student.sft_trainer import AnswerMaskCollator
from teacher.core.rundir import TrainExample

SCORES_CACHE = "base_logprobs-{key}.json"  # keyed by base model + token ids


def shape_dataset(dataset: Any, *, cfg: TrainConfig, examples: Sequence[TrainExample],
                  tokenizer: Any, scores: list[list[float]] | None,
                  with_answer_mask: bool) -> tuple[Any, dict[str, Any]]:
    """Answer masks, STM and curriculum order on a TRL-prepared dataset (has id/labels)."""
    stats: dict[str, Any] = {}
    by_id = {ex.id: ex for ex in examples}
    columns = dataset.column_names
    if with_answer_mask:
        def add_answer_mask(row: dict[str, Any]) -> dict[str, Any]:
            positions = masking.target_positions(row["labels"])
            completion = [row["input_ids"][t] for t in positions]
            response = by_id[row["id"]].response
            flags = masking.answer_mask(completion, response, answer_start(response),
                                        tokenizer.decode)
            mask = [0] * len(row["input_ids"])
            for t, flag in zip(positions, flags, strict=True):
                mask[t] = flag
            return {"answer_mask": mask}

        dataset = dataset.map(add_answer_mask)
    if cfg.token_mask_ppl is not None:
        assert scores is not None
        threshold = cfg.token_mask_ppl
        before = sum(len(masking.target_positions(lbl)) for lbl in dataset["labels"])
        dataset = dataset.map(
            lambda row, idx: {"labels": masking.mask_high_perplexity(row["labels"], scores[idx],
                                                                     threshold)},
            with_indices=True)
        after = sum(len(masking.target_positions(lbl)) for lbl in dataset["labels"])
        stats["stm"] = {"threshold": threshold, "target_tokens": before,
                        "masked_tokens": before - after,
                        "masked_share": round((before - after) / max(before, 1), 4)}
    if cfg.curriculum == "easy_to_hard":
        ids = dataset["id"]
        recorded = {i: by_id[i].nll for i in ids if by_id[i].nll is not None}
        if len(recorded) == len(ids):
            nll, source = recorded, "teacher records"
        else:
            assert scores is not None
            nll = {i: masking.mean_nll(s) for i, s in zip(ids, scores, strict=True)}
            source = "base model"
        order = easy_to_hard(ids, nll)
        dataset = dataset.select(order)
        stats["curriculum"] = {"order": "easy_to_hard", "nll_source": source,
                               "first": ids[order[0]], "last": ids[order[-1]]}
    assert "id" in columns
    return dataset, stats


def base_model_scores(trainer: Any, dataset: Any, *, cache_dir: Path, revision: str,
                      batch_size: int) -> list[list[float]]:
    """Per-target-token logprobs of the dataset under the base model, computed once."""
    from accelerate import PartialState

    rows = dataset.select_columns(["id", "input_ids", "labels"]).to_list()
    key = masking.sequence_key(revision, rows)
    cache_file = cache_dir / SCORES_CACHE.format(key=key)
    model = trainer.model
    pad_id = trainer.processing_class.pad_token_id

    def compute() -> list[list[float]]:
        print(f"scoring {len(rows)} training examples with the base model (cached in "
              f"{cache_file})", file=sys.stderr, flush=True)
        # The LoRA B matrices start at zero, but say what we mean: the base model.
        with model.disable_adapter():
            return masking.score_targets(model, rows, pad_id, batch_size)

    with PartialState().main_process_first():  # the main process fills the cache
        return masking.cached_scores(cache_file, key, compute)


def shape_trainer_data(trainer: Any, cfg: TrainConfig, *, train: Sequence[TrainExample],
                       val: Sequence[TrainExample], cache_dir: Path, revision: str,
                       topk: TeacherTopK | None = None) -> dict[str, Any]:
    """Shapes the trainer's datasets (and collator) as configured; returns the statistics."""
    tokenizer = trainer.processing_class
    if topk is not None:
        # First, while the labels still mark the whole completion (before STM masks some).
        trainer.train_dataset = attach_topk(trainer.train_dataset, topk, train, tokenizer)
        if trainer.eval_dataset is not None:
            trainer.eval_dataset = attach_topk(trainer.eval_dataset, topk, val, tokenizer)
        trainer.data_collator = KDCollator(trainer.data_collator, topk.k)
    scores = None
    if cfg.token_mask_ppl is not None or (
            cfg.curriculum == "easy_to_hard" and any(ex.nll is None for ex in train)):
        scores = base_model_scores(trainer, trainer.train_dataset, cache_dir=cache_dir,
                                   revision=revision,
                                   batch_size=int(trainer.args.per_device_eval_batch_size))
    with_answer_mask = cfg.rationale_weight is not None
    trainer.train_dataset, stats = shape_dataset(
        trainer.train_dataset, cfg=cfg, examples=train, tokenizer=tokenizer, scores=scores,
        with_answer_mask=with_answer_mask)
    if with_answer_mask:
        if trainer.eval_dataset is not None:  # validation: the same loss, no STM, any order
            trainer.eval_dataset, _ = shape_dataset(
                trainer.eval_dataset, cfg=dataclasses.replace(
                    cfg, token_mask_ppl=None, curriculum="none"),
                examples=val, tokenizer=tokenizer, scores=None, with_answer_mask=True)
        trainer.data_collator = AnswerMaskCollator(trainer.data_collator)
    return stats
