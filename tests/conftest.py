"""Shared fixtures: the real test model, the benchmark data, real teacher servers."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
ENGINES = ["hf", "vllm"] if HAS_VLLM else ["hf"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark data: $DISTILL_DATA_DIR or ../shared/data beside the repo."""
    path = Path(os.environ.get("DISTILL_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"benchmark data not found at {path}")
    return path


@pytest.fixture(scope="session")
def test_model_dir() -> Path:
    """The real small model (smollm2-135m-instruct), pulled into the cache if needed."""
    override = os.environ.get("DISTILL_TEST_MODEL")
    if override:
        return Path(override)
    from teacher.core import models

    return Path(models.resolve(models.TEST_MODEL))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, test_model_dir) -> Path:
    """A 2-layer Llama (hidden 64) with the smollm2 tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-model")
    tokenizer = AutoTokenizer.from_pretrained(test_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, initializer_range=0.1,  # sharp enough logits to overfit fast
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
