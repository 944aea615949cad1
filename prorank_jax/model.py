"""The Qwen2 / Qwen2.5 / Qwen3 and Llama decoder as pure functions over a params pytree.

The params pytree mirrors Hugging Face's module names, so conversion is a table
(see hf.py)::

    {"model": {"embed_tokens": {"embedding": [V, D]},
               "layers": {...stacked on a leading layer axis by nn.scan...},
               "norm": {"weight": [D]}},
     "lm_head": {"kernel": [D, V]}}          # absent when embeddings are tied

Linen modules hold the layer math; the public functions below (forward_hidden,
logits_at, token_logprobs, ...) are what the rest of the library calls. None of
them materialises [batch, length, vocab] logits except full_logits, which exists
for tests and small vocabularies.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prorank_jax.attention import AttentionMask, attend
from prorank_jax.config import ModelConfig, RopeScaling
from prorank_jax.dtypes import dtype_of

Params = Any


class KVCache(NamedTuple):
    """Keys/values of every layer for decoding; a pytree, so it can be donated.

    k, v: [layers, batch, max_len, kv_heads, head_dim]; valid: [batch, max_len]
    marks slots that hold a real (non-padding) token; index: next slot to write;
    next_position: the RoPE position of each sequence's next token.
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array
    next_position: jax.Array


def init_cache(config: ModelConfig, batch: int, max_len: int) -> KVCache:
    shape = (config.num_hidden_layers, batch, max_len, config.num_key_value_heads, config.head_dim)
    dtype = dtype_of(config.dtype)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        valid=jnp.zeros((batch, max_len), bool),
        index=jnp.zeros((), jnp.int32),
        next_position=jnp.zeros((batch,), jnp.int32),
    )


def take_cache_rows(cache: KVCache, rows: jax.Array) -> KVCache:
    """The cache of sequences `rows` [N] (repeats allowed), so that N sequences can continue
    from a few cached prefixes; index is shared by every row, so it is kept."""
    return KVCache(
        k=cache.k[:, rows],
        v=cache.v[:, rows],
        valid=cache.valid[rows],
        index=cache.index,
        next_position=cache.next_position[rows],
    )


def slot_tokens(token_slots: jax.Array, num_slots: int) -> jax.Array:
    """Inverse of a packing: for each of `num_slots` slots, the index in `token_slots` [N] of
    the token that sits there, or N for a slot that holds no computed token. Entries of
    token_slots equal to num_slots (filler tokens) occupy no slot."""
    n = token_slots.shape[0]
    empty = jnp.full((num_slots,), n, jnp.int32)
    return empty.at[token_slots].set(jnp.arange(n, dtype=jnp.int32), mode="drop")


def grow_cache(cache: KVCache, extra: int) -> KVCache:
    """The cache with `extra` empty (invalid) slots appended after its last one.

    A prefill sized to its prompt leaves no room for what follows; growing it when the
    continuation's length is known keeps the prefill's shape independent of that length.
    """
    slots = ((0, 0), (0, 0), (0, extra), (0, 0), (0, 0))
    return cache._replace(
        k=jnp.pad(cache.k, slots),
        v=jnp.pad(cache.v, slots),
        valid=jnp.pad(cache.valid, ((0, 0), (0, extra))),
    )


# ----------------------------------------------------------------------------- blocks
class RMSNorm(nn.Module):
    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # HF casts back to the input dtype before the weight multiply; same order here.
        return weight.astype(self.dtype) * normed.astype(self.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> jax.Array:
    """The [head_dim / 2] rotary frequencies, float32, with Llama 3.1's scaling when given."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling is None:
        return inv_freq
    wavelen = 2 * jnp.pi / inv_freq
    long_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    short_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    stretched = jnp.where(wavelen > long_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    interpolated = (1 - smooth) * stretched / scaling.factor + smooth * stretched
    between = (wavelen >= short_wavelen) & (wavelen <= long_wavelen)
    return jnp.where(between, interpolated, stretched)


def rope_cos_sin(
    positions: jax.Array, head_dim: int, theta: float, scaling: RopeScaling | None = None
) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [batch, length, head_dim] in float32 for integer positions."""
    inv_freq = rope_inv_freq(head_dim, theta, scaling)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate [batch, length, heads, head_dim] by the half-split convention of HF."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask, layer_cache=None, cache_index=None, packing=None):
        c = self.config
        dtype, pdtype = dtype_of(c.dtype), dtype_of(c.param_dtype)
        batch, length, _ = x.shape

        def proj(features, name, bias):
            return nn.Dense(features, use_bias=bias, dtype=dtype, param_dtype=pdtype, name=name)

        q = proj(c.num_attention_heads * c.head_dim, "q_proj", c.attention_bias)(x)
        k = proj(c.num_key_value_heads * c.head_dim, "k_proj", c.attention_bias)(x)
        v = proj(c.num_key_value_heads * c.head_dim, "v_proj", c.attention_bias)(x)
        q = q.reshape(batch, length, c.num_attention_heads, c.head_dim)
        k = k.reshape(batch, length, c.num_key_value_heads, c.head_dim)
        v = v.reshape(batch, length, c.num_key_value_heads, c.head_dim)
        if c.qk_norm:
            q = RMSNorm(c.rms_norm_eps, dtype, pdtype, name="q_norm")(q)
            k = RMSNorm(c.rms_norm_eps, dtype, pdtype, name="k_norm")(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if packing is not None:
            # Packed tokens ([1, N]) go to their [batch, length] slots for attention only;
            # empty slots read a zero row (they are masked as keys and never read back).
            token_slots, tokens_of_slots = packing
            batch, length = tokens_of_slots.shape

            def to_slots(t):
                rows = jnp.concatenate([t[0], jnp.zeros((1,) + t.shape[2:], t.dtype)])
                return rows[tokens_of_slots]

            q, k, v = to_slots(q), to_slots(k), to_slots(v)

        new_cache = None
        if layer_cache is not None:
            cache_k, cache_v = layer_cache
            start = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
            v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
            new_cache = (k, v)
        # The one call site: attention.attend picks the implementation (config.attn_implementation).
        out = attend(q, k.astype(q.dtype), v.astype(q.dtype), mask, c.attn_implementation)
        out = out.reshape(batch, length, c.num_attention_heads * c.head_dim)
        if packing is not None:
            out = jnp.take(out.reshape(batch * length, -1), packing[0], axis=0, mode="clip")[None]
        return proj(c.hidden_size, "o_proj", c.o_proj_bias)(out), new_cache


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        dense = lambda f, name: nn.Dense(  # noqa: E731
            f, use_bias=c.mlp_bias, dtype=dtype_of(c.dtype), param_dtype=dtype_of(c.param_dtype), name=name
        )
        gate = dense(c.intermediate_size, "gate_proj")(x)
        up = dense(c.intermediate_size, "up_proj")(x)
        return dense(c.hidden_size, "down_proj")(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    """One pre-norm block; called by nn.scan as (carry, per-layer input) -> (carry, output)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, hidden, layer_cache, cos, sin, mask, cache_index, packing=None):
        c = self.config
        dtype, pdtype = dtype_of(c.dtype), dtype_of(c.param_dtype)
        normed = RMSNorm(c.rms_norm_eps, dtype, pdtype, name="input_layernorm")(hidden)
        attn, new_cache = Attention(c, name="self_attn")(normed, cos, sin, mask, layer_cache, cache_index, packing)
        hidden = hidden + attn
        normed = RMSNorm(c.rms_norm_eps, dtype, pdtype, name="post_attention_layernorm")(hidden)
        hidden = hidden + MLP(c, name="mlp")(normed)
        return hidden, new_cache


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class QwenModel(nn.Module):
    """Embedding, scanned decoder layers, final norm; HF's Qwen2Model / Qwen3Model / LlamaModel."""

    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids, positions, mask, cache_kv=None, cache_index=None, token_slots=None):
        c = self.config
        dtype, pdtype = dtype_of(c.dtype), dtype_of(c.param_dtype)
        packing = None
        if token_slots is not None:
            # Only the tokens at token_slots run through the dense layers, as one [1, N] row.
            batch, length = input_ids.shape
            packing = (token_slots, slot_tokens(token_slots, batch * length).reshape(batch, length))
            take = lambda a: jnp.take(a.reshape(-1), token_slots, mode="clip")[None]  # noqa: E731
            input_ids, positions = take(input_ids), take(positions)
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=dtype, param_dtype=pdtype, name="embed_tokens")
        hidden = embed(input_ids)
        cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta, c.rope_scaling)

        layer_cls = DecoderLayer
        if c.remat != "none":
            layer_cls = nn.remat(DecoderLayer, policy=_REMAT_POLICIES[c.remat], prevent_cse=False)
        # Scanning keeps compile time flat in depth: one layer is traced, params gain a layer axis.
        layers = nn.scan(
            layer_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=c.num_hidden_layers,
        )(c, name="layers")
        hidden, new_cache_kv = layers(hidden, cache_kv, cos, sin, mask, cache_index, packing)
        hidden = RMSNorm(c.rms_norm_eps, dtype, pdtype, name="norm")(hidden)
        return hidden, new_cache_kv


# ----------------------------------------------------------------------------- functions
def init_params(config: ModelConfig, rng: jax.Array, init_std: float = 0.02) -> Params:
    """Random params with HF's layout (normal(0, init_std) matrices, zero biases, unit norms)."""
    return _init_params_jit(config, rng, init_std)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_params_jit(config: ModelConfig, rng: jax.Array, init_std: float) -> Params:
    ids = jnp.zeros((1, 1), jnp.int32)
    mask = AttentionMask(jnp.ones((1, 1), bool), jnp.zeros((1,), jnp.int32))
    model_params = QwenModel(config).init(rng, ids, ids, mask)["params"]

    def reinit(path, leaf):
        name = path[-1].key
        if name in ("kernel", "embedding"):
            key = jax.random.fold_in(rng, zlib.crc32(jax.tree_util.keystr(path).encode()) % (2**31))
            return (init_std * jax.random.normal(key, leaf.shape, jnp.float32)).astype(leaf.dtype)
        return leaf

    params = {"model": jax.tree_util.tree_map_with_path(reinit, model_params)}
    if not config.tie_word_embeddings:
        key = jax.random.fold_in(rng, 7)
        kernel = init_std * jax.random.normal(key, (config.hidden_size, config.vocab_size), jnp.float32)
        params["lm_head"] = {"kernel": kernel.astype(dtype_of(config.param_dtype))}
    return params


def positions_from_mask(attention_mask: jax.Array, start: jax.Array | int = 0) -> jax.Array:
    """Per-sequence positions that start at `start` on the first real token (left padding)."""
    mask = attention_mask.astype(jnp.int32)
    positions = jnp.cumsum(mask, axis=-1) - 1
    return jnp.maximum(positions, 0) + jnp.asarray(start, jnp.int32)[..., None]


def forward_hidden(
    params: Params,
    config: ModelConfig,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    positions: jax.Array | None = None,
    cache: KVCache | None = None,
    token_slots: jax.Array | None = None,
) -> tuple[jax.Array, KVCache | None]:
    """Final-norm hidden states [batch, length, hidden] (and the updated cache).

    attention_mask [batch, length] marks real tokens (left padding is 0). Without a
    cache, token t attends to real tokens s <= t. With a cache the new tokens are
    written at slots [cache.index, cache.index + length) and attend to every valid
    slot up to their own; the cache must have room for them (see extend_hidden).
    With a cache the new tokens may also be right-padded: positions count real tokens
    only and padded slots are never valid keys, so the real tokens are unaffected.

    token_slots [N] (packed execution) lists the flat slots b * length + t whose tokens
    are computed, as one [N, hidden] array through every dense layer; attention still
    sees the [batch, length] layout, so masks, positions and the cache are as above.
    Padding then costs no projection or MLP work. Unlisted slots must be padding or
    tokens whose outputs are not needed (a row may be skipped whole); entries equal to
    batch * length are filler. The result is hidden [N, hidden] in token_slots order
    (filler rows meaningless); see `slot_tokens` to find a slot's row. The packed tokens
    form one row, so this is for unsharded (single-device) inference, not a data mesh.
    """
    attention_mask = attention_mask.astype(bool)
    length = input_ids.shape[1]
    if cache is None:
        if positions is None:
            positions = positions_from_mask(attention_mask)
        mask = AttentionMask(attention_mask, jnp.arange(length, dtype=jnp.int32))
        hidden, _ = QwenModel(config).apply(
            {"params": params["model"]}, input_ids, positions, mask, token_slots=token_slots
        )
        return (hidden if token_slots is None else hidden[0]), None

    if positions is None:
        positions = positions_from_mask(attention_mask, cache.next_position)
    valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, cache.index))
    mask = AttentionMask(valid, (cache.index + jnp.arange(length)).astype(jnp.int32))
    hidden, (new_k, new_v) = QwenModel(config).apply(
        {"params": params["model"]}, input_ids, positions, mask, (cache.k, cache.v), cache.index, token_slots
    )
    if token_slots is not None:
        hidden = hidden[0]
    new_cache = KVCache(
        k=new_k,
        v=new_v,
        valid=valid,
        index=cache.index + length,
        next_position=cache.next_position + attention_mask.sum(axis=-1).astype(jnp.int32),
    )
    return hidden, new_cache


def extend_hidden(
    params: Params,
    config: ModelConfig,
    cache: KVCache,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    token_slots: jax.Array | None = None,
) -> tuple[jax.Array, KVCache]:
    """Hidden states [batch, length, hidden] of a block of new tokens that continue the
    sequences in `cache` (and the cache holding them too): the "extend" step.

    The cache gains `length` slots and forward_hidden's cache path does the rest, the
    same path the sampler decodes through one token at a time: each new token attends
    to the valid cached slots and causally to the new tokens before it, and row b's
    positions continue from cache.next_position[b] (its count of real cached tokens),
    whatever padding the cache holds. attention_mask marks the real new tokens; padding
    them on the right keeps row b's last real token at column sum(mask[b]) - 1. The
    hidden states of padded columns are meaningless. token_slots packs the new tokens
    as in forward_hidden.
    """
    grown = grow_cache(cache, input_ids.shape[1])
    return forward_hidden(params, config, input_ids, attention_mask, cache=grown, token_slots=token_slots)


def lm_head_kernel(params: Params, config: ModelConfig) -> jax.Array:
    """The [hidden, vocab] output projection (the embedding, transposed, when tied)."""
    if config.tie_word_embeddings:
        return params["model"]["embed_tokens"]["embedding"].T
    return params["lm_head"]["kernel"]


def lm_head_columns(params: Params, config: ModelConfig, token_ids) -> jax.Array:
    """Only the output-projection columns of `token_ids`: [hidden, len(token_ids)]."""
    token_ids = jnp.asarray(token_ids)
    if config.tie_word_embeddings:
        return params["model"]["embed_tokens"]["embedding"][token_ids].T
    return params["lm_head"]["kernel"][:, token_ids]


def logits_at(params: Params, config: ModelConfig, hidden: jax.Array, index: jax.Array) -> jax.Array:
    """Float32 logits at one position per sequence: hidden [B, T, D], index [B] -> [B, V]."""
    picked = jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]
    return _project(picked, lm_head_kernel(params, config), config)


def last_hidden(hidden: jax.Array) -> jax.Array:
    """Hidden state of the last position, which is the last real token under left padding."""
    return hidden[:, -1]


def _project(hidden: jax.Array, kernel: jax.Array, config: ModelConfig) -> jax.Array:
    dtype = dtype_of(config.dtype)
    return jnp.dot(hidden.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)


def full_logits(params: Params, config: ModelConfig, input_ids, attention_mask) -> jax.Array:
    """[B, T, V] float32 logits. For tests and tiny vocabularies only."""
    hidden, _ = forward_hidden(params, config, input_ids, attention_mask)
    return _project(hidden, lm_head_kernel(params, config), config)


# Default number of tokens (rows x positions) whose logits are formed at once: the
# transient is chunk_tokens x vocab floats (~0.6 GB at Qwen2.5's 151936 at 1024 tokens),
# whatever the batch shape.
LOGPROB_CHUNK_TOKENS = 1024


def logprob_chunking(batch: int, length: int, chunk_tokens: int) -> tuple[int, int]:
    """(row_strides, positions) of token_logprobs' chunks for a [batch, length] input.

    Positions are chunked first: a chunk holds every row and `positions` consecutive
    positions. Only when the batch alone exceeds chunk_tokens (many short completions)
    are rows split too, into `row_strides` strided groups (rows j, j + k, j + 2k, ...):
    each device's contiguous block of a batch-sharded array then contributes equally to
    every chunk, so chunking needs no communication. k divides batch.
    """
    positions = max(1, min(length, chunk_tokens // batch))
    max_rows = max(1, chunk_tokens // positions)
    row_strides = next(k for k in range(1, batch + 1) if batch % k == 0 and batch // k <= max_rows)
    return row_strides, positions


def token_logprobs(
    params: Params,
    config: ModelConfig,
    hidden: jax.Array,
    targets: jax.Array,
    temperature: float = 1.0,
    chunk_tokens: int = LOGPROB_CHUNK_TOKENS,
    with_entropy: bool = False,
):
    """log softmax(h_t W / temperature)[targets_t] for every position, float32 [B, T].

    Logits are projected onto the vocabulary about chunk_tokens tokens at a time
    (logprob_chunking), so peak memory is [chunk, V] rather than [B, T, V], in the
    forward pass and under jax.grad alike. with_entropy also returns the entropy of each
    position's distribution at that temperature ([B, T], for logging).
    """
    batch, length, dim = hidden.shape
    k, positions = logprob_chunking(batch, length, chunk_tokens)
    pad = (-length) % positions
    n_pos = (length + pad) // positions

    def to_chunks(x):  # [B, T, ...] -> [k * n_pos, B // k, positions, ...]
        x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
        x = x.reshape(batch // k, k, n_pos, positions, *x.shape[2:])
        x = jnp.moveaxis(x, 0, 2)  # [k, n_pos, B // k, positions, ...]
        return x.reshape(k * n_pos, batch // k, positions, *x.shape[4:])

    def from_chunks(x):  # the inverse, trimmed to [B, T]
        x = jnp.moveaxis(x.reshape(k, n_pos, batch // k, positions), 2, 0)
        return x.reshape(batch, n_pos * positions)[:, :length]

    kernel = lm_head_kernel(params, config)

    # Without the checkpoint, reverse mode keeps every chunk's logits (and softmax) as
    # residuals of the map: the whole [B, T, V] again. With it, backward keeps only each
    # chunk's hidden states and recomputes its logits, one chunk at a time.
    @functools.partial(jax.checkpoint, prevent_cse=False)
    def one_chunk(kernel, h, t):
        logits = _project(h, kernel, config) / temperature
        picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        log_norm = jax.nn.logsumexp(logits, axis=-1)
        if not with_entropy:
            return picked - log_norm
        probs = jnp.exp(logits - log_norm[..., None])
        return picked - log_norm, log_norm - jnp.sum(probs * logits, axis=-1)

    out = jax.lax.map(lambda args: one_chunk(kernel, *args), (to_chunks(hidden), to_chunks(targets)))
    return jax.tree_util.tree_map(from_chunks, out)


def sequence_logprobs(
    params: Params,
    config: ModelConfig,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    temperature: float = 1.0,
    chunk_tokens: int = LOGPROB_CHUNK_TOKENS,
) -> jax.Array:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) for t < T-1, float32 [B, T-1]."""
    hidden, _ = forward_hidden(params, config, input_ids, attention_mask)
    return token_logprobs(params, config, hidden[:, :-1], input_ids[:, 1:], temperature, chunk_tokens)


def count_params(params: Params) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
