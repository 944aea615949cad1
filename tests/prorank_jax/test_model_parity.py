"""Our decoder against transformers' PyTorch Qwen2ForCausalLM / Qwen3ForCausalLM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from prorank_jax import hf, model
from prorank_jax.config import REMAT_POLICIES
from tests.helpers.env import xla_flags
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


def torch_head_reference(torch_model, hidden, targets, temperature, weights):
    """The full-logits computation in torch autograd: log-probs and entropies of lm_head(hidden) /
    temperature at targets, and the gradients of sum(weights * log-probs) w.r.t. the head weight
    [V, D] (the embedding itself when tied) and the hidden states."""
    h = torch.tensor(hidden, requires_grad=True)
    torch_model.zero_grad(set_to_none=True)
    log_probs = torch.log_softmax(torch_model.lm_head(h) / temperature, dim=-1)
    picked = log_probs.gather(-1, torch.tensor(targets, dtype=torch.long)[..., None])[..., 0]
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    (torch.tensor(weights) * picked).sum().backward()
    as_np = lambda x: x.detach().numpy()  # noqa: E731
    return as_np(picked), as_np(entropy), as_np(torch_model.lm_head.weight.grad), as_np(h.grad)


# 3 rows x 7 positions. 4 tokens: chunks of all 3 rows x 1 position; 2 tokens: the batch
# alone is too big, so rows are split too (3 strided groups of 1 row); 5 tokens: all rows x
# 1 position; 1024: one chunk.
@pytest.mark.parametrize("chunk_tokens", [2, 4, model.LOGPROB_CHUNK_TOKENS])
@pytest.mark.parametrize("name", ["qwen2-gqa2-untied", "qwen3-gqa2-headdim"])
def test_token_logprobs_values_and_gradients_match_torch_full_logits(tmp_path, name, chunk_tokens):
    torch_model = make_hf_model(tmp_path, **PARITY_CONFIGS[name])
    config, params = hf.load(tmp_path)
    rng = np.random.RandomState(5)
    # Large hidden states so the softmax is far from uniform and a misplaced token shows.
    hidden = (8 * rng.randn(3, 7, config.hidden_size)).astype(np.float32)
    targets = rng.randint(0, config.vocab_size, (3, 7)).astype(np.int32)
    weights = rng.randn(3, 7).astype(np.float32)
    temperature = 0.7
    want_logp, want_entropy, want_head_grad, want_hidden_grad = torch_head_reference(
        torch_model, hidden, targets, temperature, weights)

    for with_entropy in (False, True):
        def weighted_logprobs(p, h):
            out = model.token_logprobs(p, config, h, targets, temperature, chunk_tokens, with_entropy=with_entropy)
            logp = out[0] if with_entropy else out
            return jnp.sum(weights * logp), out

        (_, out), (param_grads, hidden_grad) = jax.value_and_grad(
            weighted_logprobs, argnums=(0, 1), has_aux=True)(params, jnp.asarray(hidden))
        logp = out[0] if with_entropy else out
        assert logp.dtype == jnp.float32 and logp.shape == (3, 7)
        np.testing.assert_allclose(np.asarray(logp), want_logp, atol=1e-5, rtol=1e-5)
        if with_entropy:
            assert out[1].dtype == jnp.float32
            np.testing.assert_allclose(np.asarray(out[1]), want_entropy, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(hidden_grad), want_hidden_grad, atol=1e-5, rtol=1e-4)
        # lm_head_kernel of the gradient tree is the head's gradient whether tied or not.
        head_grad = np.asarray(model.lm_head_kernel(param_grads, config)).T
        np.testing.assert_allclose(head_grad, want_head_grad, atol=1e-5, rtol=1e-4)
        total = sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(param_grads))
        assert total == pytest.approx(float(np.abs(head_grad).sum()))  # nothing else gets a gradient
    assert np.abs(want_hidden_grad).max() > 1e-3 and np.abs(want_head_grad).max() > 1e-3


def saved_residual_sizes(fn, *args) -> list[int]:
    """Element counts of what reverse mode keeps from the forward pass for the backward one:
    the leaves of the VJP closure, traced abstractly (nothing is computed)."""
    vjp_fn = jax.eval_shape(lambda *a: jax.vjp(fn, *a)[1], *args)
    return [int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(vjp_fn)]


@pytest.mark.parametrize("with_entropy", [False, True])
def test_token_logprobs_backward_saves_no_full_logits(with_entropy):
    """Under jax.grad the chunks' logits are recomputed, not kept: no saved residual is as large
    as the [B, T, V] logits that chunking exists to avoid."""
    cfg = model.ModelConfig(vocab_size=512, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=False)
    params = model.init_params(cfg, jax.random.key(0))
    batch, length = 4, 9  # 36 tokens in chunks of 8: 5 chunks, the last one padded
    hidden = jax.random.normal(jax.random.key(1), (batch, length, cfg.hidden_size))
    targets = jax.random.randint(jax.random.key(2), (batch, length), 0, cfg.vocab_size)
    full_size = batch * length * cfg.vocab_size

    def chunked(p, h):
        out = model.token_logprobs(p, cfg, h, targets, 1.0, 8, with_entropy=with_entropy)
        return (out[0] if with_entropy else out).sum()

    def unchunked(p, h):
        logits = jnp.dot(h, model.lm_head_kernel(p, cfg))
        return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1).sum()

    # The inspection sees full logits where they are kept, so the assertion below can fail.
    assert max(saved_residual_sizes(unchunked, params, hidden)) >= full_size
    sizes = saved_residual_sizes(chunked, params, hidden)
    assert max(sizes) < full_size, sizes
    # The output projection itself (hidden x vocab) is the largest thing kept.
    assert max(sizes) == cfg.hidden_size * cfg.vocab_size


@pytest.mark.parametrize("batch, length, chunk_tokens", [
    (3, 7, 4), (3, 7, 2), (8, 100, 64), (512, 4, 1024), (512, 16, 1024), (48, 3, 16), (7, 5, 3), (1, 1, 1024)])
def test_logprob_chunking_bounds_the_chunk_and_divides_the_batch(batch, length, chunk_tokens):
    row_strides, positions = model.logprob_chunking(batch, length, chunk_tokens)
    assert batch % row_strides == 0 and 1 <= positions <= length
    rows = batch // row_strides
    assert rows * positions <= max(chunk_tokens, 1)  # the transient is at most chunk_tokens x V
    if batch <= chunk_tokens:  # rows are only split when the batch alone is too big
        assert row_strides == 1


_SHARDED_LOGPROBS_SCRIPT = """
import json, re
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from prorank_jax import model

cfg = model.ModelConfig(vocab_size=256, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True)
params = model.init_params(cfg, jax.random.key(0))
mesh = Mesh(np.array(jax.devices()), ("data",))
result = {}
for batch, length, chunk in [(64, 4, 64), (64, 32, 512), (48, 3, 16)]:
    hidden = jax.device_put(jax.random.normal(jax.random.key(1), (batch, length, 16)), NamedSharding(mesh, P("data")))
    targets = jax.device_put(jnp.zeros((batch, length), jnp.int32), NamedSharding(mesh, P("data")))
    loss = lambda p, h: model.token_logprobs(p, cfg, h, targets, 1.0, chunk).sum()
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, hidden).compile().as_text()
    result[f"{batch}x{length}/{chunk}"] = {op: len(re.findall(op, hlo)) for op in ("all-gather", "all-to-all", "all-reduce")}
print("RESULT" + json.dumps(result))
"""


def test_token_logprobs_chunks_keep_a_batch_sharded_input_local():
    """With the batch sharded over 8 devices, chunking (several chunks, rows split or not)
    moves no hidden states between devices: the compiled gradient has no all-gather or
    all-to-all, only the all-reduce of the output projection's gradient. (Chunks of
    contiguous flattened tokens would gather the whole batch onto every device.)"""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices=8), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(repo))
    proc = subprocess.run([sys.executable, "-c", _SHARDED_LOGPROBS_SCRIPT], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    for case, ops in result.items():
        assert ops["all-gather"] == 0 and ops["all-to-all"] == 0, (case, ops)
        assert ops["all-reduce"] > 0, (case, ops)  # the kernel gradient is summed: work was split


# Max per-token KL (nats, over real tokens) of our bf16 forward from transformers' float32 one:
# the cost of bf16 rounding. Measured: about 1e-6 on both models below, as for transformers'
# own bf16 forward, so the bound is loose; the ratio to transformers' bf16 KL is the tight check.
BF16_MAX_KL = 2e-3
BF16_MAX_KL_RATIO_TO_TORCH_BF16 = 4


# Qwen2 (QKV biases) and Qwen3 (q/k RMSNorm, head_dim != hidden / heads, tied head).
@pytest.mark.parametrize("name", ["qwen2-gqa2-untied", "qwen3-gqa2-headdim"])
def test_bfloat16_close_to_float32_reference(tmp_path, name):
    """bf16 compute stays within a documented per-token KL of the float32 transformers model;
    for comparison transformers' own bf16 forward is measured the same way."""
    torch_model = make_hf_model(tmp_path, **PARITY_CONFIGS[name])
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
    assert ours_kl <= BF16_MAX_KL
    assert ours_kl <= BF16_MAX_KL_RATIO_TO_TORCH_BF16 * max(max_kl(reference, torch_bf16), 1e-6)
    assert ours.dtype == np.float64 and np.isfinite(ours).all()


@pytest.mark.parametrize("name", ["qwen2-gqa7-odd", "qwen3-gqa2-headdim", "llama-bias-headdim-rope3"])
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


@pytest.mark.parametrize("remat", [p for p in REMAT_POLICIES if p != "none"])
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
    # Every policy keeps less for the backward pass than keeping all activations.
    kept = lambda c: sum(saved_residual_sizes(lambda p: loss(p, c), params))  # noqa: E731
    assert kept(cfg.replace(remat=remat)) < kept(cfg)
