"""Blockwise attention against jax.nn.dot_product_attention, and the implementation choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prorank_jax import model
from prorank_jax.attention import (
    BLOCKWISE_MIN_SCORES,
    AttentionMask,
    blockwise_attention,
    choose_implementation,
    rowwise_attention,
)
from prorank_jax.config import ConfigError, ModelConfig


def qkv(rng, batch, queries, keys, heads, kv_heads, dim):
    q = jnp.asarray(rng.randn(batch, queries, heads, dim), jnp.float32)
    k = jnp.asarray(rng.randn(batch, keys, kv_heads, dim), jnp.float32)
    v = jnp.asarray(rng.randn(batch, keys, kv_heads, dim), jnp.float32)
    return q, k, v


def left_padded_mask(lengths, width):
    valid = jnp.asarray(np.arange(width)[None, :] >= width - np.asarray(lengths)[:, None])
    return AttentionMask(valid, jnp.arange(width, dtype=jnp.int32))


@pytest.mark.parametrize("heads, kv_heads, block_keys", [(4, 4, 8), (6, 2, 16), (7, 1, 64)])
def test_blockwise_equals_dot_product_attention_with_left_padding(heads, kv_heads, block_keys):
    # 37 keys: the last block is partial for every block size; row 1 is all padding but 3 tokens,
    # so its first queries see no key at all (both sides then average every value).
    rng = np.random.RandomState(heads + block_keys)
    q, k, v = qkv(rng, 3, 37, 37, heads, kv_heads, 16)
    mask = left_padded_mask([37, 3, 20], 37)
    want = jax.nn.dot_product_attention(q, k, v, mask=mask.dense())
    got = jax.jit(blockwise_attention, static_argnums=4)(q, k, v, mask, block_keys)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_blockwise_equals_dot_product_attention_after_a_kv_cache_offset():
    # A cache of 40 slots: left-padded prefixes in slots 0..15, then 9 new queries at slots
    # 16..24 (right-padded remainders: row 0 has 4 real ones), and 15 empty slots after them.
    rng = np.random.RandomState(1)
    q, k, v = qkv(rng, 2, 9, 40, 6, 2, 8)
    prefix = np.arange(40)[None, :] >= np.array([[6], [13]])
    new = (np.arange(40)[None, :] >= 16) & (np.arange(40)[None, :] < 16 + np.array([[4], [9]]))
    mask = AttentionMask(jnp.asarray((prefix & (np.arange(40) < 16)) | new), jnp.arange(16, 25, dtype=jnp.int32))
    want = jax.nn.dot_product_attention(q, k, v, mask=mask.dense())
    got = jax.jit(blockwise_attention, static_argnums=4)(q, k, v, mask, 16)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads, kv_heads, query_block", [(4, 4, 8), (6, 2, 16), (7, 1, 64)])
def test_rowwise_equals_dot_product_attention_at_real_queries_with_left_padding(heads, kv_heads, query_block):
    # Row 1 has 3 real tokens: its first 32 queries are padding (two whole blocks of 16 are
    # skipped); padding queries' outputs are unspecified, so only real queries are compared.
    rng = np.random.RandomState(heads + query_block)
    q, k, v = qkv(rng, 3, 37, 37, heads, kv_heads, 16)
    mask = left_padded_mask([37, 3, 20], 37)
    want = jax.nn.dot_product_attention(q, k, v, mask=mask.dense())
    got = jax.jit(rowwise_attention, static_argnums=4)(q, k, v, mask, query_block)
    real = np.asarray(mask.key_valid)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=1e-5, atol=1e-5)


def test_rowwise_equals_dot_product_attention_after_a_kv_cache_offset():
    # As the blockwise case: prefixes in slots 0..15, 9 right-padded new queries at 16..24,
    # 15 empty slots after them; row 2 is a filler row with no real new token.
    rng = np.random.RandomState(1)
    q, k, v = qkv(rng, 3, 9, 40, 6, 2, 8)
    prefix = np.arange(40)[None, :] >= np.array([[6], [13], [10]])
    new = (np.arange(40)[None, :] >= 16) & (np.arange(40)[None, :] < 16 + np.array([[4], [9], [0]]))
    valid = (prefix & (np.arange(40) < 16)) | new
    mask = AttentionMask(jnp.asarray(valid), jnp.arange(16, 25, dtype=jnp.int32))
    want = jax.nn.dot_product_attention(q, k, v, mask=mask.dense())
    got = jax.jit(rowwise_attention, static_argnums=4)(q, k, v, mask, 4)
    real = valid[:, 16:25]
    assert real.sum() == 13
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=1e-5, atol=1e-5)


def test_blockwise_gradients_equal_dot_product_attention_gradients():
    """The training forward takes the same choice, so reverse mode must agree too."""
    rng = np.random.RandomState(2)
    q, k, v = qkv(rng, 2, 24, 24, 4, 2, 8)
    mask = left_padded_mask([24, 10], 24)
    weights = jnp.asarray(rng.randn(2, 24, 4, 8), jnp.float32)

    def loss(attention):
        return lambda q, k, v: jnp.sum(attention(q, k, v) * weights)

    want = jax.jit(jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask.dense())),
                            (0, 1, 2)))(q, k, v)
    got = jax.jit(jax.grad(loss(lambda q, k, v: blockwise_attention(q, k, v, mask, block_keys=8)), (0, 1, 2)))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def test_rowwise_gradients_equal_dot_product_attention_gradients():
    """The CPU training forward takes rowwise for prompts; a loss that reads real queries only
    (as every caller does) gets XLA's gradients."""
    rng = np.random.RandomState(5)
    q, k, v = qkv(rng, 2, 24, 24, 4, 2, 8)
    mask = left_padded_mask([24, 10], 24)
    weights = jnp.asarray(rng.randn(2, 24, 4, 8), jnp.float32) * mask.key_valid[:, :, None, None]

    def loss(attention):
        return lambda q, k, v: jnp.sum(attention(q, k, v) * weights)

    want = jax.jit(jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask.dense())),
                            (0, 1, 2)))(q, k, v)
    got = jax.jit(jax.grad(loss(lambda q, k, v: rowwise_attention(q, k, v, mask, query_block=8)), (0, 1, 2)))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def test_blockwise_never_forms_the_full_score_matrix():
    """The program holds [B, KV, G, T, block] scores, never [B, KV, G, T, S] (read off its HLO types)."""
    rng = np.random.RandomState(3)
    q, k, v = qkv(rng, 1, 256, 256, 4, 2, 8)
    mask = left_padded_mask([256], 256)
    for block_keys, full in ((32, False), (256, True)):
        text = jax.jit(lambda q, k, v: blockwise_attention(q, k, v, mask, block_keys=block_keys)).lower(q, k, v).as_text()
        assert ("x256x256x" in text) == full, block_keys
        assert f"x256x{block_keys}xf32" in text


def test_choose_implementation():
    long_side = int(BLOCKWISE_MIN_SCORES**0.5) + 8
    assert choose_implementation("auto", "cpu", jnp.float32, 64, 512, 512)[0] == "rowwise"
    assert choose_implementation("auto", "tpu", jnp.float32, 64, 512, 512)[0] == "xla"
    assert choose_implementation("auto", "cpu", jnp.float32, 64, long_side, long_side)[0] == "blockwise"
    assert choose_implementation("auto", "cpu", jnp.float32, 64, 1, 8192)[0] == "xla"  # one decode step
    assert choose_implementation("auto", "tpu", jnp.bfloat16, 128, long_side, long_side)[0] == "blockwise"
    assert choose_implementation("auto", "gpu", jnp.bfloat16, 64, 512, 512) == ("cudnn", "gpu: flash attention")
    impl, why = choose_implementation("auto", "gpu", jnp.float32, 64, long_side, long_side)
    assert impl == "blockwise" and "bfloat16 or float16" in why and "float32" in why
    impl, why = choose_implementation("auto", "gpu", jnp.bfloat16, 36, 16, 16)
    assert impl == "xla" and "head_dim" in why and "36" in why
    assert choose_implementation("xla", "cpu", jnp.float32, 64, long_side, long_side)[0] == "xla"
    with pytest.raises(ValueError, match="attn_implementation='flash'"):
        choose_implementation("flash", "cpu", jnp.float32, 64, 8, 8)


def test_config_rejects_an_unknown_attention_implementation():
    with pytest.raises(ConfigError, match="attn_implementation='flash'"):
        ModelConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=4, attn_implementation="flash")


TINY = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8)


def test_model_forward_and_extend_equal_across_implementations():
    """forward_hidden and extend_hidden (the reranker's two paths) give the same hidden states
    whichever implementation the config names."""
    params = model.init_params(TINY, jax.random.PRNGKey(0), init_std=0.2)
    rng = np.random.RandomState(4)
    ids = jnp.asarray(rng.randint(0, 64, (3, 40)), jnp.int32)
    mask = left_padded_mask([40, 7, 25], 40).key_valid
    rest = jnp.asarray(rng.randint(0, 64, (3, 12)), jnp.int32)
    rest_mask = jnp.asarray(np.arange(12)[None, :] < np.array([[12], [1], [5]]))
    out = {}
    for impl in ("xla", "blockwise", "rowwise"):
        config = TINY.replace(attn_implementation=impl)

        @jax.jit
        def both_paths(params, ids, mask, rest, rest_mask):
            hidden, _ = model.forward_hidden(params, config, ids, mask)
            cache = model.init_cache(config, 3, 40)
            _, cache = model.forward_hidden(params, config, ids, mask, cache=cache)
            return hidden, model.extend_hidden(params, config, cache, rest, rest_mask)[0]

        hidden, extended = both_paths(params, ids, mask, rest, rest_mask)
        out[impl] = (np.asarray(hidden)[np.asarray(mask)], np.asarray(extended)[np.asarray(rest_mask)])
    for impl in ("blockwise", "rowwise"):
        for got, want in zip(out[impl], out["xla"]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_compiling_for_names_the_platform_auto_decides_for():
    from prorank_jax.attention import compiling_for, target_platform

    assert target_platform() == jax.default_backend()
    with compiling_for("tpu"):
        assert target_platform() == "tpu"
        with compiling_for("gpu"):
            assert target_platform() == "gpu"
        assert target_platform() == "tpu"
    assert target_platform() == jax.default_backend()
