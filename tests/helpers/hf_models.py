"""Tiny random transformers Qwen and Llama models saved in HF format: the parity oracle for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

# Llama 3.1's RoPE scaling at a tiny context: with head_dim 8 and theta 10000 the four
# wavelengths (6.3, 63, 628, 6283 positions) fall in all three of its bands (kept,
# interpolated, stretched) for an original context of 64.
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}

# A spread of shapes: GQA ratios 1, 2 and 7 (each for Qwen2 and Qwen3), tied and
# untied heads, odd head counts, explicit head_dim, RoPE theta away from the default.
PARITY_CONFIGS = {
    "qwen2-mha-tied": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=4, hidden_size=32,
                           tie_word_embeddings=True, rope_theta=10000.0),
    "qwen2-gqa2-untied": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                              tie_word_embeddings=False, rope_theta=5000.0),
    "qwen2-gqa7-odd": dict(model_type="qwen2", num_attention_heads=7, num_key_value_heads=1, hidden_size=56,
                           tie_word_embeddings=False, rope_theta=1000000.0),
    "qwen3-gqa2-headdim": dict(model_type="qwen3", num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                               head_dim=16, tie_word_embeddings=True, rope_theta=20000.0),
    "qwen3-gqa7-bias": dict(model_type="qwen3", num_attention_heads=7, num_key_value_heads=1, hidden_size=28,
                            head_dim=6, tie_word_embeddings=False, attention_bias=True, rope_theta=500.0),
    # heads * head_dim (30) != hidden_size (24): the projections are not square even without GQA.
    "qwen3-mha-headdim": dict(model_type="qwen3", num_attention_heads=3, num_key_value_heads=3, hidden_size=24,
                              head_dim=10, tie_word_embeddings=False, rope_theta=1000000.0),
    # Llama (SmolLM, Llama 2/3): no biases by default, tied or untied, llama3 RoPE scaling.
    "llama-mha-tied": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=4, hidden_size=32,
                           tie_word_embeddings=True, rope_theta=10000.0),
    "llama-gqa2-untied-rope3": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2,
                                    hidden_size=32, tie_word_embeddings=False,
                                    rope_scaling=dict(LLAMA3_ROPE, rope_theta=10000.0)),
    "llama-bias-headdim-rope3": dict(model_type="llama", num_attention_heads=3, num_key_value_heads=1,
                                     hidden_size=24, head_dim=8, tie_word_embeddings=True, attention_bias=True,
                                     mlp_bias=True, rope_scaling=dict(LLAMA3_ROPE, rope_theta=10000.0)),
}
_FAMILIES = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM),
             "llama": (LlamaConfig, LlamaForCausalLM)}


def make_hf_model(folder: Path, model_type: str = "qwen2", seed: int = 0, dtype=torch.float32, **overrides):
    """Build a random tiny model, randomise its norms and biases too, save it; return the torch model."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=101, intermediate_size=40, num_hidden_layers=2, max_position_embeddings=256,
               rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg.update(overrides)
    config_cls, model_cls = _FAMILIES[model_type]
    model = model_cls(config_cls(**cfg))
    with torch.no_grad():
        # HF initialises norms to 1 and biases to 0; random values make the test see them.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model = model.to(dtype).eval()
    model.save_pretrained(folder)
    return model


def left_padded_batch(vocab_size: int, lengths, seed: int = 0):
    """input_ids, attention_mask and HF position_ids for left-padded sequences of these lengths."""
    rng = np.random.RandomState(seed)
    width = max(lengths)
    ids = rng.randint(3, vocab_size, (len(lengths), width)).astype(np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for i, n in enumerate(lengths):
        mask[i, width - n:] = 1
        ids[i, : width - n] = 0
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return ids, mask, positions


def torch_logits(model, ids, mask, positions) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions, dtype=torch.long))
    return out.logits.float().numpy()
