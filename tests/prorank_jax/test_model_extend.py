"""The extend step (a block of new tokens on top of a KV cache) against one full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prorank_jax import hf, model
from tests.helpers.hf_models import PARITY_CONFIGS, make_hf_model

PREFIXES = [6, 2, 9]  # left-padded to 9 slots
ROWS = [0, 2, 2, 1]  # four sequences continue three prefixes; prefix 2 twice
FIRST = [5, 1, 3, 4]  # first block of new tokens, right-padded to 5 columns
SECOND = [2, 3, 1, 3]  # a second block, right-padded to 3 columns


def random_ids(rng, vocab, n):
    return rng.randint(3, vocab, n).astype(np.int32).tolist()


def left_pad(seqs, width):
    ids = np.zeros((len(seqs), width), np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):], mask[i, width - len(s):] = s, 1
    return ids, mask


def right_pad(seqs, width):
    ids = np.zeros((len(seqs), width), np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return ids, mask


@pytest.mark.parametrize("name", ["qwen2-gqa2-untied", "qwen3-gqa7-bias"])
def test_extend_after_a_prefix_cache_equals_full_forward(tmp_path, name):
    make_hf_model(tmp_path, **PARITY_CONFIGS[name])
    config, params = hf.load(tmp_path)
    rng = np.random.RandomState(0)
    prefixes = [random_ids(rng, config.vocab_size, n) for n in PREFIXES]
    first = [random_ids(rng, config.vocab_size, n) for n in FIRST]
    second = [random_ids(rng, config.vocab_size, n) for n in SECOND]

    prefix_ids, prefix_mask = left_pad(prefixes, max(PREFIXES))
    cache = model.init_cache(config, len(prefixes), prefix_ids.shape[1])
    _, cache = model.forward_hidden(params, config, prefix_ids, prefix_mask, cache=cache)
    cache = model.take_cache_rows(cache, jnp.array(ROWS))

    # Two extend steps in a row: the second block follows the first block's right padding,
    # which must stay invisible (invalid slots, positions that count real tokens only).
    extend = jax.jit(lambda p, c, ids, mask: model.extend_hidden(p, config, c, ids, mask))
    got = []
    for block in (first, second):
        ids, mask = right_pad(block, max(map(len, block)))
        hidden, cache = extend(params, cache, ids, mask)
        got.append([np.asarray(hidden[b, : len(s)]) for b, s in enumerate(block)])

    full = [prefixes[r] + a + b for r, a, b in zip(ROWS, first, second)]
    width = max(map(len, full))
    full_ids, full_mask = left_pad(full, width)
    expected, _ = model.forward_hidden(params, config, full_ids, full_mask)
    expected = np.asarray(expected)
    for b, r in enumerate(ROWS):
        start = width - len(full[b]) + len(prefixes[r])
        np.testing.assert_allclose(got[0][b], expected[b, start : start + FIRST[b]], atol=1e-5)
        start += FIRST[b]
        np.testing.assert_allclose(got[1][b], expected[b, start : start + SECOND[b]], atol=1e-5)

    assert cache.k.shape[2] == max(PREFIXES) + max(FIRST) + max(SECOND)
    assert int(cache.index) == cache.k.shape[2]
    np.testing.assert_array_equal(np.asarray(cache.next_position), [len(s) for s in full])
    np.testing.assert_array_equal(np.asarray(cache.valid).sum(-1), [len(s) for s in full])


def test_take_rows_and_grow_keep_the_cache_layout():
    cfg = model.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    cache = model.init_cache(cfg, batch=3, max_len=4)
    cache = cache._replace(k=cache.k + jnp.arange(3.0)[None, :, None, None, None],
                           valid=cache.valid.at[:, 1:].set(True), index=jnp.int32(4),
                           next_position=jnp.array([3, 3, 3], jnp.int32))
    taken = model.take_cache_rows(cache, jnp.array([2, 0, 2]))
    assert taken.k.shape == (2, 3, 4, 2, 8) and int(taken.index) == 4
    np.testing.assert_array_equal(np.asarray(taken.k[0, :, 0, 0, 0]), [2.0, 0.0, 2.0])
    grown = model.grow_cache(taken, 5)
    assert grown.k.shape == grown.v.shape == (2, 3, 9, 2, 8) and grown.valid.shape == (3, 9)
    assert not np.asarray(grown.valid[:, 4:]).any() and np.asarray(grown.valid[:, 1:4]).all()
    assert int(grown.index) == 4
