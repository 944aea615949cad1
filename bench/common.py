"""Shared set-up for the side-by-side benchmarks: a Qwen2.5-0.5B-shaped random model."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import jax

from prorank_jax import hf, model
from prorank_jax.config import ModelConfig

# Qwen2.5-0.5B's shapes (config.json of the hub checkpoint), random weights.
QWEN25_05B = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                  num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, head_dim=64,
                  max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)


def qwen25_05b_config(layers: int | None = None, **overrides) -> ModelConfig:
    fields = dict(QWEN25_05B, **overrides)
    if layers is not None:
        fields["num_hidden_layers"] = layers
    return ModelConfig(**fields)


def random_hf_folder(folder: Path, config: ModelConfig, seed: int = 0) -> Path:
    """Random params saved once as an HF folder, reused across runs of a benchmark."""
    marker = folder / "config.json"
    if marker.exists() and ModelConfig.from_hf(folder) == config.replace(dtype="float32", param_dtype="float32"):
        return folder
    params = model.init_params(config, jax.random.key(seed))
    return hf.save(params, config, folder)


def machine_line() -> str:
    devices = jax.devices()
    return f"{platform.processor() or platform.machine()}, {len(devices)} x {devices[0].device_kind}, jax {jax.__version__}"


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls (fn must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]
