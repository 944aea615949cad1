"""Packed execution (forward_hidden's token_slots): the dense layers run only the listed
tokens, attention keeps the padded layout; results equal the padded forward's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prorank_jax import hf, model
from tests.helpers.hf_models import PARITY_CONFIGS, make_hf_model
from tests.prorank_jax.test_model_extend import left_pad, random_ids, right_pad

LENGTHS = [7, 3, 9, 1]  # left-padded to 9 columns
SKIPPED_ROW = 3  # a row whose tokens are not listed (as the Reranker's filler rows)
FILLER = 5  # filler entries after the real tokens


def slots_of(lengths, width, left_padded, skip=()):
    real = [r * width + c for r, n in enumerate(lengths) if r not in skip
            for c in (range(width - n, width) if left_padded else range(n))]
    return np.array(real + [len(lengths) * width] * FILLER, np.int32), len(real)


@pytest.fixture(scope="module", params=["qwen2-gqa2-untied", "qwen3-gqa7-bias"])
def loaded(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    make_hf_model(folder, **PARITY_CONFIGS[request.param])
    return hf.load(folder)


def test_packed_forward_equals_padded_forward_on_real_tokens(loaded):
    config, params = loaded
    rng = np.random.RandomState(0)
    seqs = [random_ids(rng, config.vocab_size, n) for n in LENGTHS]
    ids, mask = left_pad(seqs, max(LENGTHS))
    expected, _ = model.forward_hidden(params, config, ids, mask)
    slots, n_real = slots_of(LENGTHS, ids.shape[1], True, skip=(SKIPPED_ROW,))
    packed, _ = jax.jit(lambda p, i, m, s: model.forward_hidden(p, config, i, m, token_slots=s))(
        params, ids, mask, jnp.asarray(slots))
    assert packed.shape == (len(slots), config.hidden_size)
    flat = np.asarray(expected).reshape(-1, config.hidden_size)
    np.testing.assert_allclose(np.asarray(packed)[:n_real], flat[slots[:n_real]], rtol=0, atol=1e-5)
    assert np.isfinite(np.asarray(packed)).all()


def test_packed_extend_equals_padded_extend(loaded):
    config, params = loaded
    rng = np.random.RandomState(1)
    prefixes = [random_ids(rng, config.vocab_size, n) for n in (4, 6)]
    rests = [random_ids(rng, config.vocab_size, n) for n in (5, 2, 1)]
    prefix_ids, prefix_mask = left_pad(prefixes, 6)
    cache = model.init_cache(config, 2, 6)
    _, cache = model.forward_hidden(params, config, prefix_ids, prefix_mask, cache=cache)
    cache = model.take_cache_rows(cache, jnp.array([1, 0, 1]))
    ids, mask = right_pad(rests, 5)
    expected, expected_cache = model.extend_hidden(params, config, cache, ids, mask)
    slots, n_real = slots_of([5, 2, 1], 5, False)
    packed, packed_cache = model.extend_hidden(params, config, cache, ids, mask, token_slots=jnp.asarray(slots))
    flat = np.asarray(expected).reshape(-1, config.hidden_size)
    np.testing.assert_allclose(np.asarray(packed)[:n_real], flat[slots[:n_real]], rtol=0, atol=1e-5)
    # the cache holds the same keys/values at every valid slot
    valid = np.asarray(expected_cache.valid)
    np.testing.assert_array_equal(valid, np.asarray(packed_cache.valid))
    np.testing.assert_allclose(np.asarray(packed_cache.k)[:, valid], np.asarray(expected_cache.k)[:, valid], atol=1e-5)


def test_slot_tokens_inverts_the_packing():
    slots = jnp.array([2, 3, 4, 9, 20, 20], jnp.int32)
    where = np.asarray(model.slot_tokens(slots, 20))
    assert where.tolist() == [6, 6, 0, 1, 2, 6, 6, 6, 6, 3] + [6] * 10  # 6 = no token there
