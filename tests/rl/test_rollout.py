"""completion_logprobs shares each prompt's forward among its G completions; it must give
the log-probs (and gradients) of running every prompt + completion as one whole sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prorank_jax import model
from rl.rollout import completion_logprobs

CONFIG = model.ModelConfig(vocab_size=48, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False)
TEMPERATURE = 1.7


def _batch(group, t, seed=0):
    rng = np.random.RandomState(seed)
    b, p = 3, 7
    prompt_ids = rng.randint(0, 48, (b, p)).astype(np.int32)
    prompt_mask = np.ones((b, p), np.int32)
    prompt_mask[0, :3] = 0  # left padding of different widths
    prompt_mask[2, :1] = 0
    n = b * group
    completion_ids = rng.randint(0, 48, (n, t)).astype(np.int32)
    completion_mask = np.ones((n, t), np.int32)
    if t > 1:
        completion_mask[1, t - 1:] = 0  # ended early (EOS), right padding after it
        completion_mask[n - 1, 1:] = 0
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def _whole_sequences(params, prompt_ids, prompt_mask, completion_ids, completion_mask):
    """The plain reference: repeat the prompts, concatenate, one full forward, log-softmax."""
    group = completion_ids.shape[0] // prompt_ids.shape[0]
    ids = np.concatenate([np.repeat(prompt_ids, group, 0), completion_ids], axis=1)
    mask = np.concatenate([np.repeat(prompt_mask, group, 0), completion_mask], axis=1)
    logits = model.full_logits(params, CONFIG, ids, mask) / TEMPERATURE
    p = prompt_ids.shape[1]
    logp = jax.nn.log_softmax(logits[:, p - 1:-1], axis=-1)
    picked = jnp.take_along_axis(logp, jnp.asarray(completion_ids)[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return picked, entropy


@pytest.mark.parametrize("group,t", [(1, 1), (4, 1), (4, 3), (2, 4)])
def test_shared_prompt_logprobs_equal_whole_sequence_forward(group, t):
    params = model.init_params(CONFIG, jax.random.key(1), init_std=0.2)
    prompt_ids, prompt_mask, completion_ids, completion_mask = _batch(group, t)
    logp, entropy = completion_logprobs(params, CONFIG, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                        TEMPERATURE, with_entropy=True)
    want_logp, want_entropy = _whole_sequences(params, prompt_ids, prompt_mask, completion_ids, completion_mask)
    on = completion_mask.astype(bool)  # after a completion's end the values are not used
    assert logp.shape == (prompt_ids.shape[0] * group, t)
    np.testing.assert_allclose(np.asarray(logp)[on], np.asarray(want_logp)[on], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(entropy)[on], np.asarray(want_entropy)[on], atol=2e-5, rtol=1e-5)


def test_shared_prompt_gradients_equal_whole_sequence_gradients():
    params = model.init_params(CONFIG, jax.random.key(2), init_std=0.2)
    prompt_ids, prompt_mask, completion_ids, completion_mask = _batch(4, 3, seed=3)
    weights = np.random.RandomState(4).randn(*completion_ids.shape).astype(np.float32) * completion_mask

    def shared(p):
        return jnp.sum(weights * completion_logprobs(p, CONFIG, prompt_ids, prompt_mask, completion_ids,
                                                     completion_mask, TEMPERATURE))

    def whole(p):
        return jnp.sum(weights * _whole_sequences(p, prompt_ids, prompt_mask, completion_ids, completion_mask)[0])

    got, want = jax.grad(shared)(params), jax.grad(whole)(params)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(got)) > 1e-3


def test_completions_must_split_into_groups_over_the_prompts():
    params = model.init_params(CONFIG, jax.random.key(0))
    prompt_ids, prompt_mask, completion_ids, completion_mask = _batch(2, 2)
    with pytest.raises(ValueError, match="5 completions do not split into groups over 3 prompts"):
        completion_logprobs(params, CONFIG, prompt_ids, prompt_mask, completion_ids[:5], completion_mask[:5], 1.0)
