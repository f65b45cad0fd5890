"""The frozen-head loss kernel gives what full logits give: values and gradients."""

from __future__ import annotations

import pytest
import torch

from student.frozen_head import FrozenHeadLogProbs, applies_to, use_frozen_head


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_log_probs_entropy_top1_and_hidden_gradient_match_full_logits(chunk):
    torch.manual_seed(0)
    n, hidden_size, vocab = 7, 16, 50
    hidden = torch.randn(n, hidden_size, requires_grad=True)
    weight = torch.randn(vocab, hidden_size)
    targets = torch.randint(0, vocab, (n,))
    targets[0] = (hidden[0].detach() @ weight.t()).argmax()  # at least one top-1 hit
    per_token_grad = torch.randn(n)  # any weighting of the tokens (rationale_weight, DFT)

    log_probs, entropy, is_top1 = FrozenHeadLogProbs.apply(hidden, weight, targets, chunk)
    (log_probs * per_token_grad).sum().backward()
    got_grad = hidden.grad.clone()

    hidden.grad = None
    logp_all = torch.log_softmax(hidden @ weight.t(), dim=-1)
    want = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    (want * per_token_grad).sum().backward()
    assert torch.allclose(log_probs, want.detach(), atol=1e-5)
    assert torch.allclose(entropy, -(logp_all.exp() * logp_all).sum(-1).detach(), atol=1e-5)
    assert torch.equal(is_top1, logp_all.argmax(-1) == targets) and is_top1[0]
    assert torch.allclose(got_grad, hidden.grad, atol=1e-5)
    assert not entropy.requires_grad and not is_top1.requires_grad


def _lora_model(path, *, lora: bool = True):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    if lora:  # B initialised non-zero so every LoRA weight gets a gradient
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                 target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    return model


def test_installed_on_a_lora_model_it_matches_the_models_own_loss(tiny_model):
    model = _lora_model(tiny_model)
    base = model.get_base_model()
    assert applies_to(base)
    torch.manual_seed(1)
    ids = torch.randint(5, 400, (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0  # a padded row
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[mask == 0] = -100

    def grads(**kwargs):
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=labels, **kwargs)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    reference, want = grads()  # transformers' cross-entropy over the full logits
    trl_out, _ = grads(fused_lm_head=True)
    assert use_frozen_head(base)
    out, got = grads(fused_lm_head=True)
    assert torch.allclose(out.loss, reference.loss, atol=1e-5)
    assert torch.allclose(out.log_probs, trl_out.log_probs, atol=1e-5)
    assert torch.allclose(out.entropy, trl_out.entropy, atol=1e-4)
    assert torch.equal(out.is_top1, trl_out.is_top1)
    assert torch.equal(out.label_mask, trl_out.label_mask)
    assert set(got) == set(want) and len(got) == 8  # A and B of q, v in 2 layers
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5, rtol=1e-4), name
    # A micro-batch without a single label: a zero loss that still backpropagates.
    model.zero_grad()
    empty = model(input_ids=ids, attention_mask=mask, labels=torch.full_like(ids, -100),
                  fused_lm_head=True)
    empty.loss.backward()
    assert empty.loss.item() == 0.0 and not empty.label_mask.any()
    # Generation and plain calls still take the original path.
    with torch.no_grad():
        logits = model(input_ids=ids[:1]).logits
    assert logits.shape == (1, 12, base.config.vocab_size)


def test_not_installed_where_the_head_is_trained(tiny_model):
    full = _lora_model(tiny_model, lora=False)  # full fine-tuning: the head has a gradient
    assert not applies_to(full) and not use_frozen_head(full)
    frozen = _lora_model(tiny_model)
    frozen.get_base_model().config.final_logit_softcapping = 30.0  # a logit transform
    assert not applies_to(frozen.get_base_model())
