"""Causal self-attention for the decoder, and the one place that picks how it is computed.

Every attention in the library (training, the reranker's whole prompts and shared prefixes,
sampling) goes through `attend`, with the mask given by `AttentionMask`: key slot s is
visible to query t iff key_valid[b, s] and s <= query_slots[t]. Keeping the mask in that
factored form ([batch, keys] + [queries]) means no [batch, 1, queries, keys] array exists
unless an implementation asks for one.

Implementations (ModelConfig.attn_implementation):
  * "xla": jax.nn.dot_product_attention's XLA path; it materialises the float32
    [batch, heads, queries, keys] scores.
  * "blockwise": `blockwise_attention`, a scan over blocks of BLOCK_KEYS keys that keeps a
    running max and sum of exponentials (the log-sum-exp) per query, so at most
    [batch, heads, queries, BLOCK_KEYS] scores exist at a time; reverse mode recomputes each
    block (jax.checkpoint), so training keeps only the per-block running statistics.
  * "cudnn": jax.nn.dot_product_attention(implementation="cudnn"), cuDNN's flash attention
    on NVIDIA GPUs (bfloat16/float16, head_dim a multiple of 8 up to 128).
  * "auto" (the default): cudnn on GPU when the dtype and head_dim allow it; otherwise, and
    on CPU and TPU, blockwise when a row's score matrix exceeds BLOCKWISE_MIN_SCORES
    (queries x keys, i.e. self-attention longer than 1,024 tokens) and xla below it, where
    the full matrix is small and one fused kernel is fastest. The choice is made at trace
    time from static shapes; a fallback from cudnn is logged with its reason.

TPU runs blockwise above the threshold rather than a Pallas flash kernel: the kernels JAX
ships for TPU take a causal flag for equal-length queries and keys, not the KV-cache offset
and left padding this decoder needs.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp

from prorank_jax.config import ATTENTION_IMPLEMENTATIONS

logger = logging.getLogger(__name__)

# Above this many scores per row and head (queries x keys), "auto" stops materialising them.
BLOCKWISE_MIN_SCORES = 1024 * 1024
# Keys per block of blockwise attention: [batch, heads, queries, 512] float32 scores per step.
BLOCK_KEYS = 512
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


class AttentionMask(NamedTuple):
    """key_valid [batch, keys]: slots holding a real token; query_slots [queries]: the key
    slot each query sits in (causal: it sees slots <= its own)."""

    key_valid: jax.Array
    query_slots: jax.Array

    def dense(self) -> jax.Array:
        """The [batch, 1, queries, keys] boolean mask (for implementations that need it)."""
        keys = self.key_valid.shape[1]
        causal = jnp.arange(keys)[None, :] <= self.query_slots[:, None]
        return causal[None, None] & self.key_valid[:, None, None, :]


def _large_negative() -> jax.Array:
    # The masked-logit value jax.nn.dot_product_attention uses, so that a query with no
    # visible key (a padding row) gets the same output (the mean of all values) here.
    return jnp.asarray(-0.7 * jnp.finfo(jnp.float32).max, jnp.float32)


def choose_implementation(
    requested: str, backend: str, dtype, head_dim: int, queries: int, keys: int
) -> tuple[str, str]:
    """(implementation, why) for one attention call; pure, so it is tested on any machine."""
    if requested not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={requested!r}; expected one of {ATTENTION_IMPLEMENTATIONS}")
    if requested != "auto":
        return requested, "requested"
    long = queries * keys > BLOCKWISE_MIN_SCORES
    fallback = "blockwise" if long else "xla"
    size = f"{queries} x {keys} scores per row {'>' if long else '<='} {BLOCKWISE_MIN_SCORES}"
    if backend != "gpu":
        return fallback, f"{backend}: {size}"
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _CUDNN_DTYPES]:
        return fallback, f"gpu: cudnn needs bfloat16 or float16, the compute dtype is {jnp.dtype(dtype).name}; {size}"
    if head_dim % 8 or head_dim > 128:
        return fallback, f"gpu: cudnn needs head_dim a multiple of 8 up to 128, got {head_dim}; {size}"
    return "cudnn", "gpu: flash attention"


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, requested: str = "auto") -> jax.Array:
    """softmax(q k^T / sqrt(head_dim), masked) v for q [B, T, H, D], k/v [B, S, KV, D] (GQA:
    H a multiple of KV); the result [B, T, H, D] in q's dtype. Logits and softmax run in
    float32 whatever the input dtype."""
    impl, why = choose_implementation(requested, jax.default_backend(), q.dtype, q.shape[-1], q.shape[1], k.shape[1])
    if impl == "cudnn":
        try:
            return jax.nn.dot_product_attention(q, k, v, mask=mask.dense(), implementation="cudnn")
        except Exception as err:  # noqa: BLE001 - cuDNN refuses at trace time with several types
            if requested == "cudnn":
                raise
            impl = "blockwise" if q.shape[1] * k.shape[1] > BLOCKWISE_MIN_SCORES else "xla"
            _log_fallback(f"cudnn refused {tuple(q.shape)} x {tuple(k.shape)} {q.dtype}: {err}", impl)
    elif requested == "auto" and why.startswith("gpu:"):
        _log_fallback(why, impl)
    if impl == "blockwise":
        return blockwise_attention(q, k, v, mask)
    return jax.nn.dot_product_attention(q, k, v, mask=mask.dense())


@functools.lru_cache(maxsize=64)
def _log_fallback(reason: str, impl: str) -> None:
    # Traced once per shape; the cache keeps a repeated trace from repeating the line.
    logger.info("attention: not using cudnn (%s); using %s", reason, impl)


def blockwise_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, block_keys: int = BLOCK_KEYS
) -> jax.Array:
    """The same result as jax.nn.dot_product_attention(q, k, v, mask=mask.dense()), computed
    over blocks of block_keys keys with a running log-sum-exp (online softmax)."""
    batch, queries, heads, dim = q.shape
    keys, kv_heads = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    blocks = -(-keys // block_keys)
    pad = blocks * block_keys - keys

    def to_blocks(x):  # [B, S, ...] -> [blocks, B, block_keys, ...]
        x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(batch, blocks, block_keys, *x.shape[2:]), 1, 0)

    # Slots past the last key only exist to fill the last block: -inf gives them no weight
    # even in a query with no visible key, where masked keys get equal weight (see above).
    in_range = jnp.arange(blocks * block_keys) < keys
    slots = jnp.arange(blocks * block_keys)
    xs = (to_blocks(k), to_blocks(v), to_blocks(mask.key_valid), slots.reshape(blocks, block_keys),
          in_range.reshape(blocks, block_keys))
    qg = q.reshape(batch, queries, kv_heads, groups, dim)
    scale = jnp.asarray(dim**-0.5, jnp.float32)
    large_negative = _large_negative()

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def step(carry, block):
        out, top, total = carry  # [B, KV, G, T, D], [B, KV, G, T], [B, KV, G, T] float32
        kb, vb, valid, key_slots, real = block
        logits = jnp.einsum("btkgd,bskd->bkgts", qg, kb, preferred_element_type=jnp.float32) * scale
        visible = valid[:, None, None, None, :] & (key_slots[None, :] <= mask.query_slots[:, None])[None, None, None]
        logits = jnp.where(visible, logits, large_negative)
        logits = jnp.where(real, logits, -jnp.inf)
        new_top = jnp.maximum(top, logits.max(axis=-1))
        weights = jnp.exp(logits - new_top[..., None])
        rescale = jnp.exp(top - new_top)
        total = total * rescale + weights.sum(axis=-1)
        update = jnp.einsum("bkgts,bskd->bkgtd", weights.astype(v.dtype), vb, preferred_element_type=jnp.float32)
        return (out * rescale[..., None] + update, new_top, total), None

    stats = (batch, kv_heads, groups, queries)
    init = (jnp.zeros(stats + (dim,), jnp.float32), jnp.full(stats, -jnp.inf, jnp.float32),
            jnp.zeros(stats, jnp.float32))
    (out, _, total), _ = jax.lax.scan(step, init, xs)
    out = out / total[..., None]
    return jnp.moveaxis(out, 3, 1).reshape(batch, queries, heads, dim).astype(q.dtype)
