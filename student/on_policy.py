"""On-policy distillation: the student samples, the teacher grades every sampled token.

Each micro-batch the current student samples ``samples_per_prompt`` completions of
task prompts (``student.rollout.Sampler``), the teacher scores them over its ``Score``
API (per-token log-probs of the given completion, ``student.rollout.TeacherLink``), and
the loss is the per-token reverse KL KL(pi_student || pi_teacher) with the sampled-token
estimator -- GKD with lambda = 1 (all data on-policy) and beta = 1 (reverse KL), the
"on-policy distillation" recipe. Per completion token y_t::

    A_t  = -(log pi_s(y_t) - log pi_t(y_t))      (detached: a per-token reward)
    loss = -mean_t  A_t * log pi_s(y_t)

a policy gradient on the negative reverse KL, whose gradient is an unbiased estimate of
that of sum_t KL(pi_s || pi_t) over the student's own samples. Only the sampled token's
log-prob is needed from either model (k = 0: no top-k), so the student's is computed with
the frozen-head kernel (``student.frozen_head``: no ``[batch, length, vocab]`` logits) and
the teacher needs no more than ``Score`` already returns. The logged ``reverse_kl`` is the
per-token estimate mean_t(log pi_s - log pi_t); ``loss`` is the surrogate above.

Why not a TRL trainer as is (TRL 1.16 read for this):

* ``DistillationTrainer`` / ``experimental.gkd.GKDTrainer`` want the teacher as an
  in-process ``nn.Module`` and compute the full-vocabulary generalised JSD from both
  models' logits: a remote teacher has no logits to give, only scored tokens.
* ``experimental.server_distillation.ServerDistillationTrainer`` fetches teacher
  log-probs from a vLLM HTTP server (``VLLMClient.get_sequence_logprobs``, not this
  service's gRPC API) and for beta = 1 computes an exact KL on the {sampled token,
  tail} support, not the sampled-token policy gradient asked for here.
* ``experimental.iw_opd.IWOPDTrainer`` has this estimator (``_compute_iw_opd_loss`` with
  ``iw_opd_gamma = 0``), but behind the same vLLM client or an in-process teacher, and it
  materialises the student's full logits; it is experimental API that moves between
  releases.

So the job keeps what fits -- ``transformers.Trainer`` for the loop, optimizer,
scheduler, checkpoints, RNG state and resume (as TRL's trainers do; they derive from it),
TRL's ``_ForwardRedirection`` so the loss's backbone call goes through a DDP/FSDP
wrapper, peft for the adapter -- and overrides the two places a remote teacher changes:
``_prepare_inputs`` (sample, then score over gRPC) and ``compute_loss`` (the estimator).

The run directory is the SFT job's (``teacher.core.rundir``: manifest, adapter,
checkpoints, loss history), so eval reads an on-policy run like any other. The
manifest's ``on_policy`` section records the teacher, the sampling settings, ``k``
(0: sampled-token estimator) and the teacher-scored tokens, cumulative over resumes
(kept beside each checkpoint in ``on_policy_state.json``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from student.data import StudentError, fingerprint
from student.on_policy_config import OnPolicyConfig
from student.provenance import adapter_size_mb, git_commit, package_versions, peak_memory_mb
from student.rollout import (
    Sample,
    Sampler,
    TeacherLink,
    check_same_tokenizer,
    make_sampler,
    teacher_token_ids,
)
from teacher.core import models
from teacher.core.config import to_dict
from teacher.core.rundir import (
    ADAPTER,
    CHECKPOINTS,
    LOSS_CURVE,
    LOSS_HISTORY,
    Action,
    TrainExample,
    check_run_dir,
    last_checkpoint,
    start_run_dir,
    write_json_atomic,
    write_manifest,
)
from teacher.core.tasks import get_task

STATE_FILE = "on_policy_state.json"  # beside trainer_state.json in each checkpoint
ESTIMATOR = "sampled_token"


def train_on_policy(config: OnPolicyConfig, out_dir: str | Path, *, resume: bool = False,
                    overwrite: bool = False, callbacks: Sequence[Any] = (),
                    teacher: TeacherLink | None = None) -> Path:
    """Run the on-policy job as configured; returns the run directory.

    ``resume`` continues an interrupted run from its last complete checkpoint;
    ``teacher`` is an already open :class:`TeacherLink` to use instead of opening one
    from ``config.teacher`` (benchmarks reuse one across runs).
    """
    run = OnPolicyRun(config, out_dir)
    if run.check(resume=resume, overwrite=overwrite) == "done":
        print(f"{run.out} already holds this completed run; nothing to do", file=sys.stderr)
        return run.out
    own = teacher is None
    link = TeacherLink(config.teacher, seed=config.seed) if teacher is None else teacher
    try:
        run.setup(link, callbacks)
        run.train()
        run.save()
    finally:
        if own:
            link.close()
    return run.out


# ---------------------------------------------------------------- the loss


def on_policy_loss(student_logprobs: Any, teacher_logprobs: Any, mask: Any) -> tuple[Any, Any]:
    """(surrogate loss, reverse-KL estimate), both means over the masked tokens.

    ``student_logprobs`` (with grad), ``teacher_logprobs`` and ``mask`` are
    ``[batch, positions]``; the advantage -(log pi_s - log pi_t) is detached.
    """
    mask = mask.to(student_logprobs.dtype)
    n = mask.sum().clamp(min=1)
    log_ratio = (student_logprobs.detach() - teacher_logprobs) * mask
    loss = (log_ratio * student_logprobs).sum() / n  # = -sum(A_t * log pi_s) / n
    return loss, log_ratio.sum() / n


def completion_logprobs(lm: Any, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
    """log pi(label_t | prefix) at every labelled position, ``[batch, length - 1]`` (0
    elsewhere). ``lm`` is the transformers model (under peft, its base model: the
    adapters are inside its layers). A frozen plain head goes through the frozen-head
    kernel (one chunk of logits at a time); any other through the model's logits."""
    import torch

    from student.frozen_head import FrozenHeadLogProbs, applies_to

    targets = labels[:, 1:]
    mask = targets != -100
    if applies_to(lm):
        hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                               use_cache=False).last_hidden_state[:, :-1]
        head = lm.get_output_embeddings()
        picked, _entropy, _top1 = FrozenHeadLogProbs.apply(
            hidden.to(head.weight.device)[mask], head.weight, targets[mask].to(head.weight.device))
        return picked.new_zeros(mask.shape).masked_scatter(mask, picked)
    logits = lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, picked, torch.zeros_like(picked))


def build_batch(samples: Sequence[Sample], completions: Sequence[Sequence[int]],
                teacher_logprobs: Sequence[Sequence[float]], pad_id: int) -> dict[str, Any]:
    """Right-padded prompt + completion rows (positions count from 0 in every row, as
    the teacher scored them), labels on the completion only, and the teacher's
    log-prob of each label at the position that predicts it."""
    import torch

    rows = [list(s.prompt_ids) + list(c) for s, c in zip(samples, completions, strict=True)]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    teacher = torch.zeros((len(rows), width - 1), dtype=torch.float32)
    for i, (s, c, lp) in enumerate(zip(samples, completions, teacher_logprobs, strict=True)):
        p, n = len(s.prompt_ids), len(c)
        if len(lp) != n:
            raise StudentError(f"teacher returned {len(lp)} log-probs for {n} tokens")
        input_ids[i, : p + n] = torch.tensor(rows[i])
        attention[i, : p + n] = 1
        labels[i, p : p + n] = torch.tensor(list(c))
        teacher[i, p - 1 : p - 1 + n] = torch.tensor(list(lp), dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
            "teacher_logprobs": teacher}


# ---------------------------------------------------------------- counters


@dataclass
class OnPolicyCounters:
    """Cumulative over the whole run (saved with each checkpoint, restored on resume)."""

    teacher_scored_tokens: int = 0
    student_sampled_tokens: int = 0
    student_trained_tokens: int = 0  # prompt + completion tokens through forward/backward
    samples: int = 0
    finished_samples: int = 0  # ended with end-of-sequence
    retokenized_samples: int = 0  # trained on the canonical tokens of their text
    skipped_samples: int = 0  # decoded to no text: nothing to score
    sample_s: float = 0.0
    score_s: float = 0.0
    train_s: float = 0.0  # forward + backward (the loss and its gradient)

    @staticmethod
    def file_name(rank: int, world_size: int) -> str:
        """Each process counts its own rollouts (as each keeps its own RNG state)."""
        return STATE_FILE if world_size == 1 else STATE_FILE.replace(".json", f"_{rank}.json")

    @classmethod
    def load(cls, checkpoint: Path | None, rank: int = 0, world_size: int = 1) -> OnPolicyCounters:
        path = None if checkpoint is None else checkpoint / cls.file_name(rank, world_size)
        if path is None or not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def total(cls, per_process: Sequence[dict[str, Any]]) -> OnPolicyCounters:
        """The run's counters: counts summed over the processes, seconds the slowest's."""
        out = {}
        for f in fields(cls):
            values = [p[f.name] for p in per_process]
            out[f.name] = max(values) if isinstance(values[0], float) else sum(values)
        return cls(**out)

    def rounded(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


# ---------------------------------------------------------------- the trainer


def on_policy_trainer_class() -> type:
    """``transformers.Trainer`` with on-policy rollouts and the reverse-KL estimator
    (built on first use: transformers takes seconds to import)."""
    from transformers import Trainer
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
    from trl.models.utils import _ForwardRedirection

    class OnPolicyTrainer(Trainer):
        # The loss is a per-micro-batch token mean: the Trainer divides by the
        # accumulation steps (rollouts have no labels for it to count beforehand).
        loss_is_scaled_for_ga = False

        def __init__(self, *args: Any, sampler: Sampler, teacher: TeacherLink,
                     sampling: Any, counters: OnPolicyCounters, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.sampler, self.teacher, self.sampling = sampler, teacher, sampling
            self.counters = counters
            self._metrics: dict[str, list[float]] = defaultdict(list)
            self._forward_redirection = _ForwardRedirection()

        # ---- rollout: sample, score

        def _prepare_inputs(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
            tok, c = self.processing_class, self.counters
            prompts = [r["prompt"] for r in rows]
            t0 = time.perf_counter()
            samples = self.sampler.sample(prompts, self.sampling)
            t1 = time.perf_counter()
            texts = [tok.decode(s.completion_ids, skip_special_tokens=False) for s in samples]
            kept = [i for i, t in enumerate(texts) if t]
            if not kept:
                raise StudentError("every sampled completion decoded to no text")
            results = self.teacher.score([(prompts[samples[i].prompt_index], texts[i])
                                          for i in kept])
            t2 = time.perf_counter()
            chosen, completions, teacher_lps, retokenized = [], [], [], 0
            for i, result in zip(kept, results, strict=True):
                canonical = tok(texts[i], add_special_tokens=False)["input_ids"]
                ids, changed = teacher_token_ids(samples[i].completion_ids, result.token_ids,
                                                 canonical)
                retokenized += changed
                chosen.append(samples[i])
                completions.append(ids)
                teacher_lps.append(result.logprobs)
            scored = sum(len(ids) for ids in completions)
            c.sample_s += t1 - t0
            c.score_s += t2 - t1
            c.samples += len(samples)
            c.finished_samples += sum(s.finished for s in samples)
            c.student_sampled_tokens += sum(len(s.completion_ids) for s in samples)
            c.teacher_scored_tokens += scored
            c.retokenized_samples += retokenized
            c.skipped_samples += len(samples) - len(kept)
            m = self._metrics
            m["completion_length"].append(scored / max(len(completions), 1))
            m["finished_share"].append(sum(s.finished for s in samples) / len(samples))
            m["sample_s"].append(t1 - t0)
            m["score_s"].append(t2 - t1)
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            batch = build_batch(chosen, completions, teacher_lps, pad)
            c.student_trained_tokens += int(batch["attention_mask"].sum())
            return super()._prepare_inputs(batch)

        # ---- loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            unwrapped = self.accelerator.unwrap_model(model)
            lm = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
            student = self._forward_redirection(
                model, unwrapped, completion_logprobs, lm, inputs["input_ids"],
                inputs["attention_mask"], inputs["labels"])
            mask = inputs["labels"][:, 1:] != -100
            loss, reverse_kl = on_policy_loss(student, inputs["teacher_logprobs"], mask)
            self._metrics["reverse_kl"].append(float(reverse_kl))
            return (loss, None) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            # inputs are the prompts; the rollout happens in _prepare_inputs, timed apart.
            t0 = time.perf_counter()
            before = self.counters.sample_s + self.counters.score_s
            out = super().training_step(model, inputs, num_items_in_batch)
            rollout = self.counters.sample_s + self.counters.score_s - before
            self.counters.train_s += time.perf_counter() - t0 - rollout
            return out

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:  # a training log: the means since the last one
                for key, values in self._metrics.items():
                    if values:
                        logs[key] = round(sum(values) / len(values), 6)
                logs["teacher_scored_tokens"] = self.counters.teacher_scored_tokens
                self._metrics.clear()
            super().log(logs, start_time)

        def _save_checkpoint(self, model, trial):
            # Written before the Trainer's files: trainer_state.json (written last) is what
            # marks a checkpoint complete, so a complete checkpoint has the counters too.
            folder = Path(self._get_output_dir(trial=trial)) / (
                f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            folder.mkdir(parents=True, exist_ok=True)
            name = OnPolicyCounters.file_name(self.args.process_index, self.args.world_size)
            write_json_atomic(folder / name, asdict(self.counters))
            super()._save_checkpoint(model, trial)

    return OnPolicyTrainer


# ---------------------------------------------------------------- the job


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def load_prompts(cfg: OnPolicyConfig) -> list[TrainExample]:
    """The task prompts, drawn with ``prompts.sample_seed``; each with the task's
    reference answer, so eval's trained-item measures (memorization) see these items."""
    p = cfg.prompts
    try:
        task = get_task(p.task)
        examples = task.load(p.split, cfg.data_dir, limit=p.limit, sample_seed=p.sample_seed)
        out = []
        for ex in examples:
            prompt = task.prompt(ex, p.template)
            if isinstance(prompt, str):
                raise StudentError(f"prompts.task: {p.task!r} has no chat prompt to sample on")
            out.append(TrainExample(ex.id, [dict(m) for m in prompt], task.reference_response(ex)))
    except ValueError as exc:
        raise StudentError(f"prompts: {exc}") from exc
    if not out:
        raise StudentError(f"prompts: no prompts in task {p.task!r} split {p.split!r}")
    return out


def training_arguments(cfg: OnPolicyConfig, out: Path, *, precision: str, device: str) -> Any:
    from transformers import TrainingArguments

    from student.arguments import _build

    kwargs: dict[str, Any] = {"bf16": precision == "bf16", "fp16": False,
                              "gradient_checkpointing": False,
                              "ddp_find_unused_parameters": False}
    if device == "cpu":
        kwargs["use_cpu"] = True
    kwargs.update({k: "no" if k.endswith("_strategy") and v is False else v
                   for k, v in cfg.train.items()})
    # The batch is a list of prompts (the rollout makes the tensors): nothing to drop.
    kwargs.update(output_dir=str(out / CHECKPOINTS), seed=cfg.seed, remove_unused_columns=False,
                  eval_strategy="no", load_best_model_at_end=False)
    return _build(TrainingArguments, kwargs, "train")


class OnPolicyRun:
    """One run of the on-policy job: check -> setup -> train -> save (the SFT job's shape)."""

    def __init__(self, config: OnPolicyConfig, out_dir: str | Path):
        self.started = time.monotonic()
        config.validate()
        self.config = config
        self.out = Path(out_dir).expanduser().absolute()
        self.resolved = to_dict(config)

    def check(self, *, resume: bool, overwrite: bool) -> Action:
        """Model, prompts and what to do with the run directory; writes nothing."""
        cfg = self.config
        try:
            self.base_path = models.resolve(cfg.model)
        except (FileNotFoundError, ValueError) as exc:
            raise StudentError(f"model: {exc}") from exc
        self.prompts = load_prompts(cfg)
        self.data_fingerprint = fingerprint(self.prompts, [])
        self.action = check_run_dir(self.out, self.resolved, self.data_fingerprint,
                                    resume=resume, overwrite=overwrite)
        return self.action

    def setup(self, teacher: TeacherLink, callbacks: Sequence[Any] = ()) -> None:
        import torch
        from accelerate import PartialState
        from datasets import Dataset
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

        from student.arguments import device_precision, lora_config

        cfg = self.config
        self.device, self.precision = device_precision(cfg)  # type: ignore[arg-type]
        self.args = training_arguments(cfg, self.out, precision=self.precision,
                                       device=self.device)
        peft_config = lora_config(cfg)  # type: ignore[arg-type]
        _ = self.args.device  # the arguments set up the (possibly multi-process) state
        self.state = PartialState()
        tokenizer = AutoTokenizer.from_pretrained(self.base_path)
        check_same_tokenizer(teacher, tokenizer, self.prompts[0].prompt)
        self.teacher = teacher
        self.manifest = self._start_manifest()
        if self.state.is_main_process:
            start_run_dir(self.out, self.action, self.manifest, self.prompts, [])
        self.state.wait_for_everyone()
        self.resume_from = last_checkpoint(self.out) if self.action == "resume" else None
        if self.resume_from is not None:
            print(f"resuming {self.out} from {self.resume_from}", file=sys.stderr, flush=True)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(self.base_path, dtype=dtype)
        set_seed(cfg.seed)  # the LoRA initialisation
        model = get_peft_model(model, peft_config)
        self.counters = OnPolicyCounters.load(self.resume_from, self.state.process_index,
                                              self.state.num_processes)
        dataset = Dataset.from_list([{"id": ex.id, "prompt": ex.prompt} for ex in self.prompts])
        self.trainer = on_policy_trainer_class()(
            model=model, args=self.args, train_dataset=dataset,
            data_collator=lambda rows: rows, processing_class=tokenizer,
            callbacks=list(callbacks),
            sampler=make_sampler(cfg.sampling.sampler, model, tokenizer),
            teacher=teacher, sampling=cfg.sampling, counters=self.counters)

    def _start_manifest(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "base_model": cfg.model,
            "base_model_path": str(self.base_path),
            "base_model_revision": models.revision_of(self.base_path),
            # The student trains on its own samples: train_examples.jsonl holds the
            # prompts with the task's references for eval's trained-item measures.
            "data": {"kind": "on_policy", "task": cfg.prompts.task, "split": cfg.prompts.split,
                     "field": "student_samples"},
            "config": self.resolved,
            "dataset_fingerprint": self.data_fingerprint,
            "num_train_examples": len(self.prompts),
            "num_val_examples": 0,
            "seed": cfg.seed,
            "sample_seed": cfg.prompts.sample_seed,
            "device": self.device,
            "precision": self.precision,
            "world_size": self.state.num_processes,
            "on_policy": self._on_policy_section(OnPolicyCounters()),
            "packages": package_versions(),
            "git_commit": git_commit(),
            "started_at": _now(),
            "completed": False,
        }

    def _on_policy_section(self, counters: OnPolicyCounters, steps: int = 0) -> dict[str, Any]:
        s = self.config.sampling
        # Seconds per optimizer step by phase: what an in-process and a server sampler
        # (or two teachers) are compared on; the slowest process's, over all sessions.
        per_step = {"sample": counters.sample_s, "score": counters.score_s,
                    "train": counters.train_s}
        return {
            "teacher": self.teacher.describe(),
            "sampling": {"sampler": s.sampler, "samples_per_prompt": s.samples_per_prompt,
                         "max_new_tokens": s.max_new_tokens, "temperature": s.temperature,
                         "top_p": s.top_p},
            "k": 0,  # no top-k: the sampled-token estimator
            "estimator": ESTIMATOR,
            "loss": "reverse_kl_policy_gradient",
            **counters.rounded(),
            "step_cost_s": {k: round(v / steps, 3) for k, v in per_step.items()} if steps else None,
        }

    def train(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        checkpoint = self.resume_from
        self.result = self.trainer.train(
            resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    def save(self) -> None:
        from accelerate.utils import gather_object

        from student.loss_curve import loss_history, plot_loss_curve

        cfg, out, trainer = self.config, self.out, self.trainer
        trainer.save_model(str(out / ADAPTER))
        mine = [asdict(self.counters)]
        c = OnPolicyCounters.total(gather_object(mine) if self.state.num_processes > 1 else mine)
        self.state.wait_for_everyone()
        if not self.state.is_main_process:
            return
        history = loss_history(trainer.state.log_history)
        history["reverse_kl"] = [{"step": e.get("step"), "epoch": e.get("epoch"),
                                  "loss": e["reverse_kl"]}
                                 for e in trainer.state.log_history if "reverse_kl" in e]
        write_json_atomic(out / LOSS_HISTORY, history)
        plot_loss_curve({"train": history["reverse_kl"], "eval": []}, out / LOSS_CURVE,
                        f"{cfg.model} on-policy from {cfg.teacher.model} (reverse KL / token)")
        trainable, total = trainer.model.get_nb_trainable_parameters()
        self.manifest.update({
            "on_policy": self._on_policy_section(c, trainer.state.global_step),
            "resumed_from": str(self.resume_from) if self.resume_from else None,
            "global_step": trainer.state.global_step,
            "epochs": round(float(trainer.state.epoch or 0.0), 4),
            "final_train_loss": history["train"][-1]["loss"] if history["train"] else None,
            "final_reverse_kl": (history["reverse_kl"][-1]["loss"]
                                 if history["reverse_kl"] else None),
            "final_val_loss": None,
            "train_tokens": c.student_trained_tokens,
            "train_runtime_s": round(float(self.result.metrics.get("train_runtime", 0.0)), 2),
            "tokens_per_s": round(c.student_trained_tokens / c.train_s, 1) if c.train_s else None,
            "wall_time_s": round(time.monotonic() - self.started, 2),
            "peak_memory_mb": peak_memory_mb(self.device),
            "trainable_params": int(trainable),
            "total_params": int(total),
            "trainable_share": trainable / total if total else math.nan,
            "adapter_size_mb": adapter_size_mb(out / ADAPTER),
            "lm_head_loss": "frozen_head" if _frozen(trainer.model) else "logits",
            "finished_at": _now(),
            "completed": True,
        })
        write_manifest(out, self.manifest)  # last: marks the run complete
        print(f"run complete: {out} (step {trainer.state.global_step}, "
              f"{c.teacher_scored_tokens} teacher-scored tokens)", file=sys.stderr, flush=True)


def _frozen(model: Any) -> bool:
    from student.frozen_head import applies_to

    return applies_to(model.get_base_model() if hasattr(model, "get_base_model") else model)
