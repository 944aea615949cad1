"""Scores after a shared-prefix cache equal the whole-prompt score (ours and transformers')."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prorank_jax import hf
from prorank_jax.score import prefix_cache, rerank_scores, scores_after_prefix
from tests.helpers.hf_models import PARITY_CONFIGS, left_padded_batch, make_hf_model, torch_logits

YES, NO = 17, 42
PREFIXES = [7, 3, 12]
ROWS = [2, 0, 0, 1, 2]  # prompt b = prefix ROWS[b] + rest b
RESTS = [4, 1, 9, 6, 2]


@pytest.mark.parametrize("name", ["qwen2-mha-tied", "qwen3-gqa7-bias"])
def test_scores_after_prefix_equal_whole_prompt_scores(tmp_path, name):
    torch_model = make_hf_model(tmp_path, **PARITY_CONFIGS[name])
    config, params = hf.load(tmp_path)
    rng = np.random.RandomState(5)
    prefixes = [rng.randint(3, config.vocab_size, n).tolist() for n in PREFIXES]
    rests = [rng.randint(3, config.vocab_size, n).tolist() for n in RESTS]

    width = 16  # prefixes left-padded, remainders right-padded, both wider than needed
    prefix_ids = np.zeros((len(prefixes), width), np.int32)
    prefix_mask = np.zeros_like(prefix_ids)
    for i, p in enumerate(prefixes):
        prefix_ids[i, width - len(p):], prefix_mask[i, width - len(p):] = p, 1
    rest_ids = np.zeros((len(rests), 12), np.int32)
    for i, r in enumerate(rests):
        rest_ids[i, : len(r)] = r
    cache = jax.jit(prefix_cache, static_argnums=1)(params, config, prefix_ids, prefix_mask)
    score = jax.jit(scores_after_prefix, static_argnums=(1, 6, 7))
    got = np.asarray(score(params, config, cache, jnp.array(ROWS), rest_ids, jnp.array(RESTS), YES, NO))
    assert got.dtype == np.float32 and got.shape == (len(ROWS),)

    whole = [prefixes[r] + rest for r, rest in zip(ROWS, rests)]
    lengths = [len(w) for w in whole]
    ids, mask, positions = left_padded_batch(config.vocab_size, lengths)
    for i, w in enumerate(whole):
        ids[i, ids.shape[1] - len(w):] = w
    expected = np.asarray(rerank_scores(params, config, ids, mask, YES, NO))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    ref = torch_logits(torch_model, ids, mask, positions)
    np.testing.assert_allclose(got, ref[:, -1, YES] - ref[:, -1, NO], rtol=0, atol=1e-4)
    assert np.std(expected) > 1e-3
