"""The TRL trainer the job runs: ``SFTTrainer`` plus the student's loss, collator and log.

* ``student_trainer_class()``: the answer/rationale-weighted loss (``rationale_weight``),
  the top-k KD loss (``kd``, ``student/kd.py``) and the frozen-head kernel
  (``student/frozen_head.py``);
* ``AnswerMaskCollator``: TRL's collator plus the per-token ``answer_mask`` column;
* ``epoch_summary_class()``: one line per evaluation with the train/val gap.

The classes derive from TRL / transformers, so they are built on first use: both
libraries take seconds to import.
"""

from __future__ import annotations

import sys
from typing import Any

from student.config import KDConfig


def student_trainer_class() -> type:
    """SFTTrainer plus the answer/rationale-weighted loss (imported lazily: TRL is heavy)."""
    from trl import SFTTrainer

    from student.frozen_head import use_frozen_head
    from student.kd import use_kd_head
    from student.kd_data import COLUMNS as KD_COLUMNS

    class StudentTrainer(SFTTrainer):
        """``rationale_weight`` w: loss = w * mean NLL(answer) + (1 - w) * mean NLL(rationale);
        ``kd``: the top-k KD loss, its two terms logged as ``ce`` and ``kd_kl``."""

        def __init__(self, *args: Any, rationale_weight: float | None = None,
                     kd: KDConfig | None = None, **kwargs: Any):
            self.rationale_weight = rationale_weight
            self.kd = kd
            super().__init__(*args, **kwargs)
            # TRL patched the model for fused_lm_head=True; off GPU, with the head frozen,
            # our kernel does that job with one matmul less and only labelled tokens.
            base = (self.model.get_base_model() if hasattr(self.model, "get_base_model")
                    else self.model)
            self.frozen_head_kernel = use_frozen_head(base)
            if kd is not None:  # model(..., kd_ids=...): the top-k KD loss (student/kd.py)
                use_kd_head(base, kd)
            if rationale_weight is not None:
                # Our loss is a per-micro-batch mean: let the Trainer divide it by the
                # accumulation steps, as for a loss not normalised by num_items_in_batch.
                self.loss_is_scaled_for_ga = False

        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            extra = (["answer_mask"] if self.rationale_weight is not None else []) + (
                list(KD_COLUMNS) if self.kd is not None else [])
            self._signature_columns = [*self._signature_columns,
                                       *(c for c in extra if c not in self._signature_columns)]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.kd is not None and "kd_ids" in inputs:
                return self._kd_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.rationale_weight is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            answer = inputs.pop("answer_mask")[:, 1:].bool()
            inputs["use_cache"] = False
            outputs = model(**inputs, fused_lm_head=True)
            nll = -outputs.log_probs  # (batch, seq - 1), zero where the label is -100
            on_answer = outputs.label_mask & answer
            on_rationale = outputs.label_mask & ~answer
            w = self.rationale_weight
            loss = (w * nll[on_answer].sum() / on_answer.sum().clamp(min=1)
                    + (1 - w) * nll[on_rationale].sum() / on_rationale.sum().clamp(min=1))
            return (loss, outputs) if return_outputs else loss

        def _kd_loss(self, model, inputs, return_outputs, num_items_in_batch):
            """(1 - w) CE + w T^2 KL per labelled token, normalized as TRL's SFT loss."""
            mode = "train" if self.model.training else "eval"
            inputs["use_cache"] = False
            outputs = model(**inputs, num_items_in_batch=num_items_in_batch)
            loss = outputs.loss
            # As SFTTrainer: num_items_in_batch counts every rank's tokens; DDP averages.
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            gather = self.accelerator.gather_for_metrics
            n_label = gather(outputs.label_mask.sum()).sum()
            n_kd = gather(outputs.kd_mask.sum()).sum()
            for name, total, n in (
                    ("entropy", outputs.entropy.sum(), n_label),
                    ("mean_token_accuracy", outputs.is_top1.sum(), n_label),
                    ("ce", outputs.ce.sum(), n_label), ("kd_kl", outputs.kl.sum(), n_kd)):
                value = gather(total.detach()).sum()
                self._metrics[mode][name].append((value / n).item() if n > 0 else 0.0)
            if mode == "train":
                tokens = gather(inputs["attention_mask"].sum()).sum().item()
                self._total_train_tokens += tokens // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

    return StudentTrainer


class AnswerMaskCollator:
    """TRL's collator plus the per-token ``answer_mask`` column, padded with 0."""

    def __init__(self, base: Any):
        self.base = base

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        masks = [ex.pop("answer_mask") for ex in examples] if "answer_mask" in examples[0] else None
        batch = self.base(examples)
        if masks is not None:
            width = batch["input_ids"].shape[1]
            padded = torch.zeros((len(masks), width), dtype=torch.long)
            for i, m in enumerate(masks):
                padded[i, : len(m)] = torch.tensor(m[:width])
            batch["answer_mask"] = padded
        return batch


def epoch_summary_class() -> type:
    from transformers import TrainerCallback

    class EpochSummary(TrainerCallback):
        """One line per evaluation: train loss (mean since the last), val loss, their gap."""

        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not state.is_world_process_zero or not metrics or "eval_loss" not in metrics:
                return
            val = float(metrics["eval_loss"])
            if self.losses:
                train = sum(self.losses) / len(self.losses)
                line = (f"train loss {train:.4f} | val loss {val:.4f} | "
                        f"gap (val - train) {val - train:+.4f}")
            else:
                line = f"val loss {val:.4f}"
            self.losses = []
            print(f"[epoch {state.epoch:.2f} | step {state.global_step}] {line}",
                  file=sys.stderr, flush=True)

    return EpochSummary
