"""Our decoder against transformers' PyTorch Qwen2ForCausalLM / Qwen3ForCausalLM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from prorank_jax import hf, model
from tests.helpers.hf_models import PARITY_CONFIGS, left_padded_batch, make_hf_model, torch_logits

LENGTHS = [11, 7, 3, 11]  # left padding of 0, 4, 8 and 0 tokens


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_float32_logits_match_transformers(tmp_path, name):
    torch_model = make_hf_model(tmp_path, **PARITY_CONFIGS[name])
    config, params = hf.load(tmp_path)
    ids, mask, positions = left_padded_batch(config.vocab_size, LENGTHS)
    expected = torch_logits(torch_model, ids, mask, positions)
    ours = np.asarray(model.full_logits(params, config, ids, mask))
    real = mask.astype(bool)
    assert np.abs(ours - expected)[real].max() <= 1e-4


@pytest.mark.parametrize("name", ["qwen2-gqa2-untied", "qwen3-gqa2-headdim"])
def test_selected_positions_and_logprobs_match_full_logits(tmp_path, name):
    make_hf_model(tmp_path, **PARITY_CONFIGS[name])
    config, params = hf.load(tmp_path)
    ids, mask, _ = left_padded_batch(config.vocab_size, LENGTHS, seed=1)
    full = np.asarray(model.full_logits(params, config, ids, mask))
    hidden, _ = model.forward_hidden(params, config, ids, mask)

    index = jnp.array([10, 5, 9, 3])
    picked = np.asarray(model.logits_at(params, config, hidden, index))
    np.testing.assert_allclose(picked, full[np.arange(4), np.asarray(index)], atol=1e-5)

    for temperature, chunk in [(1.0, 4), (0.7, 128)]:
        logp = np.asarray(model.token_logprobs(params, config, hidden[:, :-1], ids[:, 1:], temperature, chunk))
        scaled = full[:, :-1] / temperature
        log_softmax = scaled - np.log(np.exp(scaled - scaled.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - scaled.max(-1, keepdims=True)
        expected = np.take_along_axis(log_softmax, ids[:, 1:, None], axis=-1)[..., 0]
        np.testing.assert_allclose(logp, expected, atol=1e-5)


def test_bfloat16_close_to_float32_reference(tmp_path):
    """bf16 compute stays within a documented per-token KL of the float32 transformers model.

    The bound (max KL 2e-3 nats over real tokens on this model) is what bf16 rounding
    costs; for comparison transformers' own bf16 forward is measured the same way.
    """
    torch_model = make_hf_model(tmp_path, **PARITY_CONFIGS["qwen2-gqa2-untied"])
    ids, mask, positions = left_padded_batch(101, LENGTHS)
    reference = torch_logits(torch_model, ids, mask, positions)
    torch_bf16 = torch_logits(torch_model.to(torch.bfloat16), ids, mask, positions)
    config, params = hf.load(tmp_path, dtype="bfloat16", param_dtype="bfloat16")
    ours = np.asarray(model.full_logits(params, config, ids, mask), np.float64)

    def max_kl(p_logits, q_logits):
        p = jax.nn.log_softmax(jnp.asarray(p_logits, jnp.float32), -1)
        q = jax.nn.log_softmax(jnp.asarray(q_logits, jnp.float32), -1)
        kl = (jnp.exp(p) * (p - q)).sum(-1)
        return float(kl[mask.astype(bool)].max())

    ours_kl = max_kl(reference, ours)
    assert ours_kl <= 2e-3
    assert ours_kl <= 4 * max(max_kl(reference, torch_bf16), 1e-6)
    assert ours.dtype == np.float64 and np.isfinite(ours).all()


@pytest.mark.parametrize("name", ["qwen2-gqa7-odd", "qwen3-gqa2-headdim"])
def test_kv_cache_decoding_equals_full_forward(tmp_path, name):
    make_hf_model(tmp_path, **PARITY_CONFIGS[name])
    config, params = hf.load(tmp_path)
    prompt_lengths = [6, 3, 5]
    ids, mask, _ = left_padded_batch(config.vocab_size, prompt_lengths, seed=2)
    new_tokens = np.random.RandomState(3).randint(3, config.vocab_size, (3, 5)).astype(np.int32)
    full_ids = np.concatenate([ids, new_tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(new_tokens)], axis=1)
    expected = np.asarray(model.full_logits(params, config, full_ids, full_mask))

    cache = model.init_cache(config, batch=3, max_len=full_ids.shape[1] + 2)
    hidden, cache = model.forward_hidden(params, config, ids, mask, cache=cache)
    width = ids.shape[1]
    got = [np.asarray(model.logits_at(params, config, hidden, jnp.full((3,), width - 1)))]
    step = jax.jit(lambda p, t, m, c: model.forward_hidden(p, config, t, m, cache=c))
    for t in range(new_tokens.shape[1]):
        hidden, cache = step(params, new_tokens[:, t:t + 1], np.ones((3, 1), np.int32), cache)
        got.append(np.asarray(model.logits_at(params, config, hidden, jnp.zeros((3,), jnp.int32))))
    got = np.stack(got, axis=1)
    np.testing.assert_allclose(got, expected[:, width - 1:], atol=1e-4)
    assert int(cache.index) == full_ids.shape[1]
    np.testing.assert_array_equal(np.asarray(cache.next_position), np.array(prompt_lengths) + 5)


def count_equations(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for sub in _subjaxprs(eqn):
            total += count_equations(sub)
    return total


def _subjaxprs(eqn):
    for value in eqn.params.values():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                yield v.jaxpr
            elif hasattr(v, "eqns"):
                yield v


def test_scan_traces_one_layer_whatever_the_depth():
    """Compile cost stays flat in depth: the traced program of 24 layers is as long as of 2."""
    def program_size(layers):
        cfg = model.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8)
        params = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
        ids = jnp.zeros((2, 8), jnp.int32)
        closed = jax.make_jaxpr(lambda p: model.forward_hidden(p, cfg, ids, ids)[0])(params)
        return count_equations(closed.jaxpr)

    two = program_size(2)
    assert two > 50  # the layer body itself is counted, not just the scan call
    assert program_size(24) == two


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_changes_memory_not_gradients(remat):
    cfg = model.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    params = model.init_params(cfg, jax.random.key(0))
    ids, mask, _ = left_padded_batch(64, [8, 5])

    def loss(p, c):
        return model.sequence_logprobs(p, c, ids, mask).sum()

    g_plain = jax.grad(loss)(params, cfg)
    g_remat = jax.grad(loss)(params, cfg.replace(remat=remat))
    for a, b in zip(jax.tree_util.tree_leaves(g_plain), jax.tree_util.tree_leaves(g_remat)):
        np.testing.assert_allclose(a, b, atol=1e-6)
