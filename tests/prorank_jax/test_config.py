import json

import pytest
from transformers import LlamaConfig, Qwen2Config, Qwen3Config

from prorank_jax.config import ConfigError, ModelConfig


def hf_dict(cls=Qwen2Config, **kw):
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    base.update(kw)
    return cls(**base).to_dict()


def test_qwen2_fields_from_transformers_dict():
    cfg = ModelConfig.from_hf(hf_dict(rope_theta=12345.0, tie_word_embeddings=True))
    assert (cfg.model_type, cfg.head_dim, cfg.rope_theta, cfg.tie_word_embeddings) == ("qwen2", 8, 12345.0, True)
    assert cfg.attention_bias and not cfg.qk_norm and cfg.num_groups == 2


def test_qwen3_explicit_head_dim_and_qk_norm():
    cfg = ModelConfig.from_hf(hf_dict(Qwen3Config, head_dim=16))
    assert cfg.head_dim == 16 and cfg.qk_norm and not cfg.attention_bias


def test_round_trip_through_hf_config_objects(tmp_path):
    for cls, kw in [(Qwen2Config, {}), (Qwen3Config, dict(head_dim=16, attention_bias=True))]:
        cfg = ModelConfig.from_hf(hf_dict(cls, rope_theta=777.0, **kw))
        (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf()))
        reloaded = (Qwen2Config if cls is Qwen2Config else Qwen3Config).from_pretrained(tmp_path)
        assert reloaded.rope_parameters["rope_theta"] == 777.0
        assert reloaded.num_key_value_heads == 2
        assert ModelConfig.from_hf(reloaded.to_dict()) == cfg
        assert ModelConfig.from_hf(tmp_path) == cfg


def test_legacy_top_level_rope_theta():
    d = hf_dict()
    d.pop("rope_parameters")
    d["rope_theta"] = 1e6
    assert ModelConfig.from_hf(d).rope_theta == 1e6


@pytest.mark.parametrize(
    "change, field, value",
    [
        (dict(use_sliding_window=True, sliding_window=128), "use_sliding_window", "True"),
        (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "rope_parameters.rope_type",
         "'yarn'"),
        (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling.rope_type", "'linear'"),
        (dict(model_type="mistral"), "model_type", "'mistral'"),
        (dict(model_type="qwen2", rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}),
         "rope_parameters.rope_type", "'llama3'"),
        (dict(hidden_act="gelu"), "hidden_act", "'gelu'"),
        (dict(attention_dropout=0.1), "attention_dropout", "0.1"),
        (dict(quantization_config={"quant_method": "gptq"}), "quantization_config", "'gptq'"),
    ],
)
def test_unsupported_features_name_the_field(change, field, value):
    d = hf_dict()
    d.update(change)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as err:
        ModelConfig.from_hf(d)
    assert value in str(err.value)


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192, "rope_theta": 500000.0}


def test_llama_fields_and_round_trip_through_transformers(tmp_path):
    """SmolLM2-like (no biases, tied) and Llama-3.1-like (llama3 RoPE, biases, head_dim) configs."""
    for kw in [dict(tie_word_embeddings=True, rope_theta=100000.0),
               dict(rope_parameters=dict(LLAMA3), attention_bias=True, mlp_bias=True, head_dim=16)]:
        cfg = ModelConfig.from_hf(hf_dict(LlamaConfig, **kw))
        assert cfg.model_type == "llama" and not cfg.qk_norm
        assert cfg.attention_bias == cfg.o_proj_bias == cfg.mlp_bias == kw.get("attention_bias", False)
        (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf()))
        reloaded = LlamaConfig.from_pretrained(tmp_path)
        assert reloaded.rope_parameters == (LLAMA3 if "rope_parameters" in kw else
                                            {"rope_type": "default", "rope_theta": 100000.0})
        assert (reloaded.attention_bias, reloaded.mlp_bias) == (cfg.attention_bias, cfg.mlp_bias)
        assert ModelConfig.from_hf(reloaded.to_dict()) == cfg
        assert ModelConfig.from_hf(tmp_path) == cfg
    legacy = hf_dict(LlamaConfig)
    legacy.pop("rope_parameters")
    legacy.update(rope_theta=500000.0, rope_scaling={k: v for k, v in LLAMA3.items() if k != "rope_theta"})
    assert ModelConfig.from_hf(legacy).rope_scaling.factor == 8.0


@pytest.mark.parametrize(
    "change, field, value",
    [
        (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "rope_parameters.rope_type",
         "'yarn'"),
        (dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}),
         "rope_parameters.rope_type", "'linear'"),
        (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}), "rope_parameters",
         "'low_freq_factor'"),
        (dict(pretraining_tp=2), "pretraining_tp", "2"),
        (dict(hidden_act="gelu"), "hidden_act", "'gelu'"),
    ],
)
def test_unsupported_llama_features_name_the_field(change, field, value):
    d = hf_dict(LlamaConfig)
    d.update(change)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as err:
        ModelConfig.from_hf(d)
    assert value in str(err.value)


def test_bad_file_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_hf(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen2",\n oops}')
    with pytest.raises(ConfigError, match=r"config.json:2"):
        ModelConfig.from_hf(tmp_path)
    with pytest.raises(ConfigError, match="multiple of num_key_value_heads"):
        ModelConfig.from_hf(hf_dict(num_key_value_heads=3))
    with pytest.raises(ConfigError, match="remat"):
        ModelConfig.from_hf(hf_dict(), remat="sometimes")
