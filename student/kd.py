"""Offline logit distillation on the teacher's top-k, without the full logits.

The teacher's side file gives, per response token, its k most likely next tokens with
their log-probs and the mass outside them (``teacher.core.topk``). The loss per
labelled token is ``(1 - w) * CE + w * T^2 * KL(teacher || student)`` (Hinton's T^2
keeps the KL's gradient scale as the temperature changes), the KL over those k ids and,
by ``kd.tail``, the rest (:func:`topk_kl`; the config documents the three forms, taken
from TRL's server distillation and DistillKit).

TRL's distillation losses want the teacher's full distribution (its
``DistillationTrainer`` projects both models' hidden states) or the student's full
``[batch, length, vocab]`` log-probs (its experimental server distillation), which on
the 0.5B is 4 x 1024 x 151,936 floats = 2.5 GB a micro-batch; so the top-k form is
written here. Every student quantity the KL needs is a log-prob at a few ids plus the
log of the mass off them, so :class:`TopKLogProbs` computes those from the hidden
states a chunk of tokens at a time, as the frozen-head kernel (``student/frozen_head.py``)
does: one chunk's logits exist at a time, and the gradient with respect to the hidden
states is assembled from two [tokens, hidden] products the forward pass keeps.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Any

import torch

from student.config import KDConfig
from student.data import StudentError
from student.frozen_head import CHUNK_TOKENS, plain_frozen_head


class TopKLogProbs(torch.autograd.Function):
    """Student log-probs of ``hidden @ weight.T`` at the label and the teacher's ids.

    Inputs: ``hidden`` [n, h], ``weight`` [vocab, h] (frozen), ``targets`` [n] and
    ``ids`` [n, k] (distinct within a row). Outputs, all normalized over the whole
    vocabulary: ``log p(target)`` [n], ``log p(ids)`` [n, k], ``log p(rest)`` [n] (the
    mass off ``ids``, computed in log space, so a peaked row does not round it to 0),
    and, without gradient, the entropy [n] and top-1 hit [n] (TRL's metrics).

    Gradient: with ``p`` the softmax, ``d log p(j) / d logits = onehot_j - p`` and
    ``d log p(rest) / d logits = q - p``, ``q`` being ``p`` restricted to the rest and
    renormalized. So ``d / d hidden`` is a combination of ``weight`` rows at the ids,
    ``pW = p @ weight`` and ``qW = q @ weight``; the forward keeps ``pW`` and ``qW``
    ([n, h] each). ``qW`` is one product with the vocabulary; ``pW`` follows from it
    without another (``p = rest * q + sum_j p_j onehot_j``).
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                ids: torch.Tensor, chunk_tokens: int = CHUNK_TOKENS):
        n, k = ids.shape
        dev = hidden.device
        target_lp = torch.empty(n, dtype=torch.float32, device=dev)
        ids_lp = torch.empty((n, k), dtype=torch.float32, device=dev)
        rest_lp = torch.empty(n, dtype=torch.float32, device=dev)
        entropy = torch.empty(n, dtype=torch.float32, device=dev)
        is_top1 = torch.empty(n, dtype=torch.bool, device=dev)
        need_grad = ctx.needs_input_grad[0]
        p_w = torch.empty((n, hidden.shape[1]), dtype=torch.float32, device=dev) if need_grad \
            else None
        q_w = torch.empty_like(p_w) if need_grad else None
        for start in range(0, n, chunk_tokens):
            end = min(start + chunk_tokens, n)
            rows = torch.arange(end - start, device=dev)
            target, cols = targets[start:end], ids[start:end]
            z = (hidden[start:end].to(weight.dtype) @ weight.t()).float()
            lse = torch.logsumexp(z, -1)
            target_lp[start:end] = z[rows, target] - lse
            col_lp = z.gather(1, cols) - lse[:, None]
            ids_lp[start:end] = col_lp
            is_top1[start:end] = z.argmax(-1) == target
            p = torch.exp(z - lse[:, None])
            entropy[start:end] = lse - torch.linalg.vecdot(p, z)
            del p
            z.scatter_(1, cols, float("-inf"))  # the rest: every id but the teacher's
            rest_lse = torch.logsumexp(z, -1)
            rest_lp[start:end] = rest_lse - lse
            if need_grad:
                q = torch.exp(z.sub_(rest_lse[:, None]))  # 0 at the ids
                qw = q.to(weight.dtype) @ weight
                del q
                w_cols = weight[cols].float()  # [c, k, h]
                q_w[start:end] = qw
                p_w[start:end] = ((rest_lse - lse).exp()[:, None] * qw
                                  + torch.einsum("ck,ckh->ch", col_lp.exp(), w_cols))
        ctx.save_for_backward(weight, targets, ids, p_w, q_w)
        ctx.hidden_dtype = hidden.dtype
        ctx.chunk_tokens = chunk_tokens
        ctx.mark_non_differentiable(entropy, is_top1)
        return target_lp, ids_lp, rest_lp, entropy, is_top1

    @staticmethod
    def backward(ctx: Any, g_target: torch.Tensor, g_ids: torch.Tensor, g_rest: torch.Tensor,
                 _entropy: Any, _top1: Any):
        weight, targets, ids, p_w, q_w = ctx.saved_tensors
        n = targets.shape[0]
        grad = torch.empty(p_w.shape, dtype=ctx.hidden_dtype, device=p_w.device)
        for start in range(0, n, ctx.chunk_tokens):
            end = min(start + ctx.chunk_tokens, n)
            gt, gi, gr = g_target[start:end], g_ids[start:end], g_rest[start:end]
            # sum_j g_j (W_j - pW) + g_rest (qW - pW)
            g = (gt[:, None] * weight[targets[start:end]].float()
                 + torch.einsum("ck,ckh->ch", gi, weight[ids[start:end]].float())
                 + gr[:, None] * q_w[start:end]
                 - (gt + gi.sum(-1) + gr)[:, None] * p_w[start:end])
            grad[start:end] = g.to(ctx.hidden_dtype)
        return grad, None, None, None, None


def topk_kl(ids_lp: torch.Tensor, rest_lp: torch.Tensor, teacher_lp: torch.Tensor,
            teacher_tail: torch.Tensor, tail: str = "bucket",
            temperature: float = 1.0) -> torch.Tensor:
    """Per-token forward KL(teacher || student) on the teacher's top-k, [n].

    ``ids_lp`` [n, k] and ``rest_lp`` [n]: the student's log-probs at the teacher's ids
    and of the mass off them (over the whole vocabulary, temperature 1);
    ``teacher_lp`` [n, k] and ``teacher_tail`` [n] likewise for the teacher. ``tail``
    and ``temperature`` as in ``student.config.KDConfig``; not multiplied by T^2.
    """
    if tail == "renormalize":
        # Renormalizing over the ids cancels each side's normalizer, so the tempered
        # distributions restricted to the ids are exact: softmax(log p / T) over them.
        t = torch.log_softmax(teacher_lp / temperature, -1)
        s = torch.log_softmax(ids_lp / temperature, -1)
        return (t.exp() * (t - s)).sum(-1)
    if temperature != 1.0:
        raise ValueError(f"kd.temperature {temperature} needs kd.tail 'renormalize'")
    kl = (teacher_lp.exp() * (teacher_lp - ids_lp)).sum(-1)
    if tail == "zero":
        return kl
    if tail != "bucket":
        raise ValueError(f"kd.tail: {tail!r} is not bucket, renormalize or zero")
    # The (k+1)-th class; a teacher whose top-k held all its mass adds nothing.
    mass = teacher_tail.exp()
    rest = torch.where(mass > 0, mass * (teacher_tail - rest_lp), torch.zeros_like(mass))
    return kl + rest


@functools.cache
def kd_output_class() -> type:
    """The forward's output (a ``ModelOutput``, so DDP and the Trainer handle it)."""
    from transformers.utils import ModelOutput

    @dataclass
    class KDCausalLMOutput(ModelOutput):
        """``loss``: the mixed per-token loss (sum / labelled tokens); the rest per shifted
        position [batch, length - 1], zero where unused."""

        loss: torch.Tensor | None = None
        ce: torch.Tensor | None = None  # -log p(label) at labelled positions
        kl: torch.Tensor | None = None  # KL(teacher || student) at positions with a teacher row
        entropy: torch.Tensor | None = None
        is_top1: torch.Tensor | None = None
        label_mask: torch.Tensor | None = None
        kd_mask: torch.Tensor | None = None

    return KDCausalLMOutput


def kd_loss_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                        kd_ids: torch.Tensor, kd_logprobs: torch.Tensor,
                        kd_tail: torch.Tensor, kd_mask: torch.Tensor, settings: KDConfig,
                        num_items_in_batch: Any = None,
                        chunk_tokens: int = CHUNK_TOKENS) -> Any:
    """The mixed loss from the shifted hidden states [b, l, h] and shifted labels [b, l].

    ``kd_ids`` [b, l, k] (distinct per row; any distinct ids where ``kd_mask`` is
    False), ``kd_logprobs`` [b, l, k], ``kd_tail`` [b, l], ``kd_mask`` [b, l]: the
    teacher's row predicting each shifted label. Divided by ``num_items_in_batch`` (the
    labelled tokens of the whole accumulated batch, as TRL's SFT loss) or, without it, by
    this micro-batch's labelled tokens.
    """
    mask = labels != -100
    kd_on = kd_mask.bool() & mask
    target_lp, ids_lp, rest_lp, entropy, is_top1 = TopKLogProbs.apply(
        hidden[mask], weight, labels[mask], kd_ids[mask], chunk_tokens)
    sel = kd_on[mask]  # which labelled tokens have a teacher row
    kl_sel = topk_kl(ids_lp[sel], rest_lp[sel], kd_logprobs[kd_on].float(),
                     kd_tail[kd_on].float(), settings.tail, settings.temperature)
    w, t2 = settings.weight, settings.temperature ** 2
    total = (1 - w) * -target_lp.sum() + w * t2 * kl_sel.sum()
    count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    # masked_scatter keeps an all-masked micro-batch connected to the graph (a zero loss)
    def spread(x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(where.shape).masked_scatter(where, x)

    return kd_output_class()(
        loss=total / count, ce=spread(-target_lp.detach(), mask),
        kl=spread(kl_sel.detach(), kd_on), entropy=spread(entropy, mask),
        is_top1=spread(is_top1, mask), label_mask=mask, kd_mask=kd_on)


def use_kd_head(model: Any, settings: KDConfig) -> None:
    """Route ``model(..., kd_ids=...)`` through :func:`kd_loss_from_hidden`.

    ``model`` is the transformers model (under PEFT: its base model, after the adapters
    were added); calls without ``kd_ids`` go to its forward unchanged. The call goes
    through the model's (DDP-wrapped) forward, so gradients synchronize as usual.
    Raises ``StudentError`` where the head is trained or not a plain projection.
    """
    if not plain_frozen_head(model):
        raise StudentError("kd: needs a frozen output head that is a plain projection (LoRA "
                         "without the head in lora.modules_to_save; no logit scaling or "
                         "softcapping)")
    previous = model.forward

    @functools.wraps(type(model).forward)
    def forward(self: Any, *args: Any, kd_ids: Any = None, kd_logprobs: Any = None,
                kd_tail: Any = None, kd_mask: Any = None, labels: Any = None,
                num_items_in_batch: Any = None, **kwargs: Any):
        if kd_ids is None:
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return previous(*args, labels=labels, **kwargs)
        kwargs.pop("fused_lm_head", None)
        kwargs["use_cache"] = False
        head = self.get_output_embeddings()
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        dev = head.weight.device
        return kd_loss_from_hidden(
            hidden.to(dev), head.weight, labels[:, 1:].to(dev), kd_ids.to(dev),
            kd_logprobs.to(dev), kd_tail.to(dev), kd_mask.to(dev), settings,
            num_items_in_batch)

    model.forward = types.MethodType(forward, model)
