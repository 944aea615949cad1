"""ModelConfig: the hyperparameters of a Qwen2 / Qwen2.5 / Qwen3 or Llama decoder.

Built from (and written back to) a Hugging Face ``config.json``. Only what the
decoder implements is accepted: a feature that would change the numbers (sliding
window attention, an unimplemented RoPE scaling, another activation) raises a
ConfigError naming the field and its value instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama")
# The HF causal-LM class of each family (config.json's "architectures").
CAUSAL_LM_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
# RoPE scalings the decoder implements, by HF's rope_type.
ROPE_SCALING_TYPES = ("llama3",)
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
# How attention is computed; see prorank_jax/attention.py.
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "blockwise", "rowwise", "cudnn")

class ConfigError(ValueError):
    """A configuration field has a value this library cannot honour."""


def _normalize_token_ids(name: str, value: Any) -> int | tuple[int, ...] | None:
    """None, one id (an int) or several ids (a tuple of ints; a list becomes one)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if not value or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in value):
            raise ConfigError(f"{name}={value!r} must be a token id or a non-empty list of token ids (ints >= 0)")
        return tuple(int(t) for t in value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}={value!r} must be a token id (an int >= 0) or a list of them")
    return int(value)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1's frequency-dependent RoPE scaling (HF rope_type "llama3"): wavelengths
    longer than original_max_position_embeddings / low_freq_factor are stretched by
    `factor`, shorter than ... / high_freq_factor are kept, and those between interpolate."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_type: str = "llama3"

    def __post_init__(self):
        if self.rope_type not in ROPE_SCALING_TYPES:
            raise ConfigError(f"rope_scaling.rope_type={self.rope_type!r}; expected one of {ROPE_SCALING_TYPES}")
        if not self.high_freq_factor > self.low_freq_factor > 0 or self.factor <= 0:
            raise ConfigError(
                f"rope_scaling: factor={self.factor}, low_freq_factor={self.low_freq_factor}, "
                f"high_freq_factor={self.high_freq_factor}; expected factor > 0 and "
                "high_freq_factor > low_freq_factor > 0"
            )
        if self.original_max_position_embeddings <= 0:
            raise ConfigError(f"rope_scaling.original_max_position_embeddings="
                              f"{self.original_max_position_embeddings} must be positive")

    def to_hf(self, rope_theta: float) -> dict[str, Any]:
        return {"rope_type": self.rope_type, "rope_theta": rope_theta, "factor": self.factor,
                "low_freq_factor": self.low_freq_factor, "high_freq_factor": self.high_freq_factor,
                "original_max_position_embeddings": self.original_max_position_embeddings}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of the decoder; field names follow Hugging Face's Qwen2Config /
    LlamaConfig.

    The families differ in a few switches: Qwen2 has q/k/v biases (attention_bias), Qwen3
    q/k RMSNorm (qk_norm) and, with attention_bias, biases on all four projections; Llama
    has no biases unless attention_bias / mlp_bias say so, and may scale RoPE
    (rope_scaling, Llama 3.1's "llama3" type).

    dtype is the compute dtype (activations, matmul inputs); param_dtype is the
    storage dtype of the weights. Whatever dtype is chosen, RoPE angles, RMSNorm
    statistics, attention softmax and reranking scores are computed in float32.
    remat: "none" keeps all activations, "full" recomputes each layer in the
    backward pass, "dots"/"dots_with_no_batch_dims" save only matmul outputs.
    attn_implementation: how attention is computed (prorank_jax/attention.py): "auto" picks
    cuDNN flash attention on GPU, blockwise (never the full score matrix) on CPU/TPU above
    1,024 tokens, below it row-by-row blocks on CPU (prompts) and XLA's fused kernel
    elsewhere; "xla", "blockwise", "rowwise", "cudnn" force one.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    model_type: str = "qwen2"
    max_position_embeddings: int = 32768
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = True
    mlp_bias: bool = False
    qk_norm: bool = False
    rope_scaling: RopeScaling | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None  # a list (as in many hub configs) becomes a tuple
    pad_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    attn_implementation: str = "auto"

    def __post_init__(self):
        # The config is a static argument of jitted functions, so it must hash: a list of
        # EOS ids (as many hub config.json files have) is kept as a tuple.
        object.__setattr__(self, "eos_token_id", _normalize_token_ids("eos_token_id", self.eos_token_id))
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"model_type={self.model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError(f"rope_scaling={self.rope_scaling!r} must be a RopeScaling or None")
        if self.mlp_bias and self.model_type != "llama":
            raise ConfigError(f"mlp_bias=True is a Llama option; model_type={self.model_type!r} has none")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in COMPUTE_DTYPES:
                raise ConfigError(f"{name}={getattr(self, name)!r}; expected one of {COMPUTE_DTYPES}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"remat={self.remat!r}; expected one of {REMAT_POLICIES}")
        if self.attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(
                f"attn_implementation={self.attn_implementation!r}; expected one of {ATTENTION_IMPLEMENTATIONS}"
            )

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every EOS id of the config, as a tuple (empty when it names none)."""
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head (1 = multi-head attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def o_proj_bias(self) -> bool:
        """Qwen3's and Llama's attention_bias also covers o_proj; Qwen2 never has an o_proj bias."""
        return self.model_type in ("qwen3", "llama") and self.attention_bias

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF interop
    @classmethod
    def from_hf(cls, config: Mapping[str, Any] | str | os.PathLike, **overrides: Any) -> "ModelConfig":
        """From an HF config dict, a config.json path, or a checkpoint folder."""
        source = "config"
        if not isinstance(config, Mapping):
            path = Path(config)
            if path.is_dir():
                path = path / "config.json"
            source = str(path)
            try:
                config = json.loads(path.read_text())
            except FileNotFoundError:
                raise ConfigError(f"{path}: no config.json found") from None
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        return cls(**_fields_from_hf(dict(config), source), **overrides)

    def to_hf(self) -> dict[str, Any]:
        """The config.json dict that transformers reads for this model."""
        if self.rope_scaling is None:
            rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
        else:
            rope_parameters = self.rope_scaling.to_hf(self.rope_theta)
        out: dict[str, Any] = {
            "architectures": [CAUSAL_LM_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope_parameters,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": self.param_dtype,
            "use_cache": True,
        }
        if self.model_type in ("qwen2", "qwen3"):
            out.update(use_sliding_window=False, sliding_window=None)
        if self.model_type == "qwen3":
            out["attention_bias"] = self.attention_bias
        if self.model_type == "llama":
            out.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias, pretraining_tp=1)
            if self.rope_scaling is not None:
                # transformers before 5 read the scaling from rope_scaling only.
                out["rope_scaling"] = rope_parameters
        return out


def _fields_from_hf(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    def fail(field: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{source}: field {field!r} = {value!r} is not supported; expected {expected}")

    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise fail("model_type", model_type, f"one of {SUPPORTED_MODEL_TYPES}")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ConfigError(f"{source}: missing required field(s) {missing}")

    if cfg.get("hidden_act", "silu") != "silu":
        raise fail("hidden_act", cfg["hidden_act"], "'silu'")
    if cfg.get("use_sliding_window", False):
        raise fail("use_sliding_window", cfg["use_sliding_window"], "false (sliding-window attention is not implemented)")
    layer_types = cfg.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
        raise fail("layer_types", sorted(set(layer_types)), "only 'full_attention' layers")
    if cfg.get("attention_dropout", 0.0):
        raise fail("attention_dropout", cfg["attention_dropout"], "0.0 (attention dropout is not implemented)")
    if cfg.get("quantization_config"):
        raise fail("quantization_config", cfg["quantization_config"].get("quant_method"), "no quantization (dequantize first)")
    if cfg.get("use_mrope", False):
        raise fail("use_mrope", cfg["use_mrope"], "false")
    if cfg.get("pretraining_tp", 1) != 1:
        raise fail("pretraining_tp", cfg["pretraining_tp"], "1 (split-matmul emulation is not implemented)")

    rope_theta, rope_scaling = _rope_from_hf(cfg, model_type, source, fail)
    heads = int(cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or int(cfg["hidden_size"]) // heads
    is_qwen3 = model_type == "qwen3"
    # Qwen2 always has q/k/v biases (its config has no switch); Qwen3 and Llama say so.
    attention_bias = bool(cfg.get("attention_bias", False)) if model_type != "qwen2" else True
    mlp_bias = bool(cfg.get("mlp_bias", False)) if model_type == "llama" else False
    return dict(
        model_type=model_type,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
        rope_theta=float(rope_theta),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
        mlp_bias=mlp_bias,
        qk_norm=is_qwen3,
        rope_scaling=rope_scaling,
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
    )


def _rope_from_hf(cfg: dict[str, Any], model_type: str, source: str, fail) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from a config.json: transformers 5 keeps RoPE settings in
    rope_parameters, older files in rope_theta and rope_scaling; both may be present and
    must then agree."""
    rope_theta = cfg.get("rope_theta")
    scaling: RopeScaling | None = None
    for key in ("rope_parameters", "rope_scaling"):
        rope = cfg.get(key)
        if not rope:
            continue
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind == "llama3" and model_type == "llama":
            try:
                found = RopeScaling(
                    factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                    high_freq_factor=float(rope["high_freq_factor"]),
                    original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
                )
            except KeyError as err:
                raise ConfigError(f"{source}: {key} of rope_type 'llama3' lacks field {err.args[0]!r}") from None
            except ConfigError as err:
                raise ConfigError(f"{source}: {key}: {err}") from None
            if scaling is not None and scaling != found:
                raise ConfigError(f"{source}: rope_parameters and rope_scaling describe different scalings")
            scaling = found
        elif kind != "default":
            allowed = "'default' or 'llama3'" if model_type == "llama" else "'default' (no RoPE scaling for this family)"
            raise fail(f"{key}.rope_type", kind, allowed)
        if "rope_theta" in rope:
            if rope_theta is not None and float(rope["rope_theta"]) != float(rope_theta):
                raise ConfigError(
                    f"{source}: rope_theta={rope_theta} disagrees with {key}.rope_theta={rope['rope_theta']}"
                )
            rope_theta = rope["rope_theta"]
    return float(10000.0 if rope_theta is None else rope_theta), scaling
