"""The training loss's output projection when that projection is frozen (LoRA), off GPU.

TRL's SFTTrainer patches the model so that ``model(..., fused_lm_head=True)`` returns
per-token log-probabilities without building the ``[batch, length, vocab]`` logits. On
devices without Triton (CPU) its kernel falls back to torch ops that score every position
(prompt and padding too) and recompute every logits tile in the backward pass: on the
0.5B student (vocabulary 151,936) made a LoRA training step ~25% slower than the
model's own cross-entropy. With a frozen head the gradient with respect to the hidden
states is fixed once the forward has the probabilities, so :class:`FrozenHeadLogProbs`
forms it there, a chunk of tokens at a time: two matmuls per scored token (as plain
cross-entropy), only the tokens with a label are scored, and one chunk's logits exist at a
time. Measured on the 0.5B, LoRA, batches of 4 GSM8K examples, 2 CPU cores
(benchmarks/student_throughput.py): 61.7 training tokens/s vs 45.8 on the model's own loss
and ~37 on TRL's CPU fallback; peak memory 9.4 GB vs 12.3 GB on the model's own loss.

:func:`use_frozen_head` installs it over TRL's patched forward where it applies; any call
it does not cover (no ``fused_lm_head``, pre-shifted labels, MoE router losses) goes to
TRL's forward unchanged.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch

# Tokens per logits chunk: 256 x 151,936 fp32 = 156 MB (two such buffers live at a time).
# Measured on the 0.5B: 64, 256 and 1024 tokens per chunk run within 3% of each other.
CHUNK_TOKENS = 256

# Config attributes that change the logits beyond hidden @ weight.T (TRL handles them).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier",
                     "lm_head_multiplier", "logits_scaling")


class FrozenHeadLogProbs(torch.autograd.Function):
    """Per-token ``log p(target)``, entropy and top-1 hit of ``hidden @ weight.T``.

    ``weight`` gets no gradient. The gradient of each log-probability with respect to
    its hidden state, ``(onehot - p) @ weight``, is computed in the forward pass and
    scaled by the incoming per-token gradient in the backward. Entropy and top-1 are for
    metrics only (no gradient).
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk_tokens: int = CHUNK_TOKENS):
        n = hidden.shape[0]
        log_probs = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(log_probs)
        is_top1 = torch.empty(n, dtype=torch.bool, device=hidden.device)
        need_grad = ctx.needs_input_grad[0]
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32,
                                  device=hidden.device) if need_grad else None
        for start in range(0, n, chunk_tokens):
            end = min(start + chunk_tokens, n)
            target = targets[start:end]
            rows = torch.arange(end - start, device=hidden.device)
            z = (hidden[start:end].to(weight.dtype) @ weight.t()).float()
            target_logit = z[rows, target]
            is_top1[start:end] = z.argmax(-1) == target
            z_max = z.amax(-1, keepdim=True)
            z.sub_(z_max)
            p = torch.exp(z)
            total = p.sum(-1, keepdim=True)
            p.div_(total)
            log_total = total.log().squeeze(-1)
            entropy[start:end] = log_total - torch.linalg.vecdot(p, z)
            log_probs[start:end] = target_logit - z_max.squeeze(-1) - log_total
            if need_grad:  # d log p(target) / d logits = onehot - p
                p.neg_()
                p[rows, target] += 1
                grad_hidden[start:end] = p.to(weight.dtype) @ weight
        ctx.save_for_backward(grad_hidden)
        ctx.hidden_dtype = hidden.dtype
        ctx.mark_non_differentiable(entropy, is_top1)
        return log_probs, entropy, is_top1

    @staticmethod
    def backward(ctx: Any, grad_log_probs: torch.Tensor, _entropy: Any, _top1: Any):
        (grad_hidden,) = ctx.saved_tensors
        grad = (grad_log_probs.unsqueeze(-1) * grad_hidden).to(ctx.hidden_dtype)
        return grad, None, None, None


def _sharded(weight: torch.Tensor) -> bool:
    """An FSDP2 DTensor or a ZeRO-3 partition (TRL's kernel gathers those)."""
    return type(weight).__name__ == "DTensor" or weight.numel() == 0


def plain_frozen_head(model: Any) -> bool:
    """Whether ``model``'s head is frozen and plain: logits = hidden @ weight.T (no bias,
    no logit transforms, no MoE router loss), on any device."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        return False
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.requires_grad:
        return False  # full fine-tuning or a trained head: TRL's kernel has the weight gradient
    text_config = model.config.get_text_config()
    if getattr(text_config, "output_router_logits", False):
        return False  # MoE: TRL adds the router's load-balancing loss
    return not any(getattr(text_config, name, None) not in (None, 1.0)
                   for name in _LOGIT_TRANSFORMS)


def applies_to(model: Any) -> bool:
    """Whether ``model``'s head is frozen, plain (no logit transforms, no MoE router
    loss) and off Triton."""
    from transformers.utils import is_triton_available

    if not plain_frozen_head(model):
        return False
    weight = model.get_output_embeddings().weight
    # TRL's Triton kernels
    return not (weight.device.type in ("cuda", "xpu") and is_triton_available())


def use_frozen_head(model: Any) -> bool:
    """Route ``model(..., fused_lm_head=True)`` through :class:`FrozenHeadLogProbs`.

    ``model`` is the transformers model TRL patched (under PEFT: its base model, after
    the adapters were added). Returns whether it was installed.
    """
    from trl.trainer.utils import FusedCausalLMOutput

    if not applies_to(model):
        return False
    trl_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(self: Any, *args: Any, fused_lm_head: bool = False, labels: Any = None,
                shift_labels: Any = None, num_items_in_batch: Any = None, **kwargs: Any):
        head = self.get_output_embeddings()
        if (not fused_lm_head or shift_labels is not None or labels is None
                or head.weight.requires_grad or _sharded(head.weight)
                or kwargs.get("output_router_logits")):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels,
                               shift_labels=shift_labels, num_items_in_batch=num_items_in_batch,
                               **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(head.weight.device)
        mask = labels != -100
        picked = FrozenHeadLogProbs.apply(hidden.to(head.weight.device)[mask], head.weight,
                                          labels[mask])
        # masked_scatter keeps an all-masked micro-batch connected to the graph (a zero loss)
        log_probs, entropy, is_top1 = (x.new_zeros(mask.shape).masked_scatter(mask, x)
                                       for x in picked)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / count, log_probs=log_probs,
                                   entropy=entropy, is_top1=is_top1, label_mask=mask)

    model.forward = types.MethodType(forward, model)
    return True
