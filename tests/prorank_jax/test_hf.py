"""HF folder -> ours -> HF folder: transformers reloads it, tensors are bit-identical."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from prorank_jax import hf, model
from tests.helpers.hf_models import PARITY_CONFIGS, left_padded_batch, make_hf_model, torch_logits


@pytest.mark.parametrize("name, dtype", [("qwen2-gqa2-untied", torch.float32), ("qwen3-gqa2-headdim", torch.bfloat16),
                                         ("qwen2-mha-tied", torch.float16), ("llama-bias-headdim-rope3", torch.bfloat16),
                                         ("llama-gqa2-untied-rope3", torch.float32)])
def test_round_trip_is_bit_identical_and_loads_in_transformers(tmp_path, name, dtype):
    src, dst = tmp_path / "src", tmp_path / "dst"
    original = make_hf_model(src, dtype=dtype, **PARITY_CONFIGS[name])
    dtype_name = str(dtype).removeprefix("torch.")
    config, params = hf.load(src, param_dtype=dtype_name)
    hf.save(params, config, dst)

    before, after = hf.read_safetensors(src / "model.safetensors"), hf.read_safetensors(dst / "model.safetensors")
    assert sorted(before) == sorted(after)
    for key in before:
        assert before[key].dtype == after[key].dtype
        assert before[key].tobytes() == after[key].tobytes(), key

    # Both sides loaded the same way: a model built in memory and cast keeps fp32 RoPE
    # buffers that a loaded one does not, which shifts bf16 logits by itself.
    reloaded = AutoModelForCausalLM.from_pretrained(dst, dtype=dtype).eval()
    reference = AutoModelForCausalLM.from_pretrained(src, dtype=dtype).eval()
    assert original.dtype == reloaded.dtype == dtype
    ids, mask, positions = left_padded_batch(config.vocab_size, [9, 4])
    np.testing.assert_array_equal(torch_logits(reloaded, ids, mask, positions),
                                  torch_logits(reference, ids, mask, positions))
    assert json.loads((dst / "generation_config.json").read_text())["eos_token_id"] == 2


def test_sharded_checkpoints_both_ways(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    original = make_hf_model(src, **PARITY_CONFIGS["qwen2-gqa7-odd"])
    original.save_pretrained(src, max_shard_size="40KB")
    assert (src / "model.safetensors.index.json").exists()
    config, params = hf.load(src)
    hf.save(params, config, dst, max_shard_bytes=40_000)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reloaded = AutoModelForCausalLM.from_pretrained(dst).eval()
    ids, mask, positions = left_padded_batch(config.vocab_size, [6, 6])
    np.testing.assert_array_equal(torch_logits(reloaded, ids, mask, positions),
                                  torch_logits(original, ids, mask, positions))


def test_random_params_export_to_transformers_with_matching_logits(tmp_path):
    """ours -> HF: a model that only ever existed in JAX scores the same in torch."""
    import jax

    cfg = model.ModelConfig(vocab_size=80, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                            num_attention_heads=6, num_key_value_heads=2, head_dim=4, rope_theta=3000.0)
    params = model.init_params(cfg, jax.random.key(1), init_std=0.2)
    hf.save(params, cfg, tmp_path / "out")
    torch_model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids, mask, positions = left_padded_batch(80, [7, 2, 5])
    ours = np.asarray(model.full_logits(params, cfg, ids, mask))
    np.testing.assert_allclose(ours[mask.astype(bool)], torch_logits(torch_model, ids, mask, positions)[mask.astype(bool)],
                               atol=1e-5)


def test_tokenizer_files_are_copied(tmp_path):
    from tests.helpers.tokenizer import build_test_tokenizer

    tok_dir = build_test_tokenizer(tmp_path / "tok")
    make_hf_model(tmp_path / "src", **PARITY_CONFIGS["qwen2-mha-tied"])
    config, params = hf.load(tmp_path / "src")
    hf.save(params, config, tmp_path / "dst", tokenizer_dir=tok_dir)
    assert (tmp_path / "dst" / "tokenizer.json").exists()
    # Beside a config.json AutoTokenizer picks the class from the model type (Qwen2Tokenizer,
    # which splits digits unlike the bare tokenizer.json), so the source is loaded for that
    # model too: the saved folder must tokenize as the source tokenizer does for this model.
    source = AutoTokenizer.from_pretrained(tok_dir, config=AutoConfig.from_pretrained(tmp_path / "src"))
    saved = AutoTokenizer.from_pretrained(tmp_path / "dst")
    text = "<|im_start|>user\nquery: what is the capital of France? 2024 ünïcödé 東京<|im_end|>"
    assert saved(text)["input_ids"] == source(text)["input_ids"]
    assert saved.convert_tokens_to_ids("<|im_end|>") in saved(text)["input_ids"]  # a special token, not bytes
    assert (saved.eos_token, saved.pad_token) == (source.eos_token, source.pad_token)
    with pytest.raises(hf.HFFolderError, match="no tokenizer files"):
        hf.save(params, config, tmp_path / "dst2", tokenizer_dir=tmp_path / "src")
    assert not (tmp_path / "dst2").exists()  # nothing half-written is left behind
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def _rewrite(folder, mutate):
    tensors = {k: np.array(v) for k, v in hf.read_safetensors(folder / "model.safetensors").items()}
    mutate(tensors)
    hf.write_safetensors(folder / "model.safetensors", tensors)


def test_missing_unexpected_and_misshaped_tensors_are_all_listed(tmp_path):
    make_hf_model(tmp_path, **PARITY_CONFIGS["qwen2-gqa2-untied"])

    def mutate(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        t["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
        t["model.norm.weight"] = np.zeros(5, np.float32)

    _rewrite(tmp_path, mutate)
    with pytest.raises(hf.HFFolderError) as err:
        hf.load(tmp_path)
    msg = str(err.value)
    assert "missing tensors (1): ['model.layers.1.mlp.up_proj.weight']" in msg
    assert "unexpected tensors (1): ['model.layers.0.extra.weight']" in msg
    assert "model.norm.weight: (5,) (expected (32,))" in msg


def test_tied_checkpoint_with_a_different_lm_head_is_refused(tmp_path):
    make_hf_model(tmp_path, **PARITY_CONFIGS["qwen2-mha-tied"])
    _rewrite(tmp_path, lambda t: t.__setitem__("lm_head.weight", np.ones((101, 32), np.float32)))
    with pytest.raises(hf.HFFolderError, match="lm_head.weight differs"):
        hf.load(tmp_path)


def test_folder_without_weights_or_with_broken_index(tmp_path):
    make_hf_model(tmp_path, **PARITY_CONFIGS["qwen2-mha-tied"])
    (tmp_path / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(hf.HFFolderError, match="no model.safetensors"):
        hf.load(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(hf.HFFolderError, match="gone.safetensors"):
        hf.load(tmp_path)
