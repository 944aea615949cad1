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
  * "rowwise": `rowwise_attention`, one row and ROW_QUERY_BLOCK queries at a time, skipping
    blocks with no real query; for prompt-sized attention on CPU, where it is 3-6x faster
    than XLA's kernel (the scores stay in cache). Its output at padding queries is
    unspecified, which no caller reads (they are masked as keys and never scored).
  * "cudnn": jax.nn.dot_product_attention(implementation="cudnn"), cuDNN's flash attention
    on NVIDIA GPUs (bfloat16/float16, head_dim a multiple of 8 up to 128).
  * "auto" (the default): cudnn on GPU when the dtype and head_dim allow it; otherwise, and
    on CPU and TPU, blockwise when a row's score matrix exceeds BLOCKWISE_MIN_SCORES
    (queries x keys, i.e. self-attention longer than 1,024 tokens); below it rowwise on CPU
    (from ROWWISE_MIN_QUERIES queries on) and xla elsewhere, where one fused kernel over the
    small matrix is fastest. The choice is made at trace
    time from static shapes; a fallback from cudnn is logged with its reason.

The platform "auto" decides for is the one the program is compiled for: jax's default
backend, or the one named by `compiling_for` while a program is lowered for devices this
process does not run on (--compile-for lowers TPU programs on a CPU machine, and must
trace what a TPU run traces, not the CPU-only rowwise path).

TPU runs blockwise above the threshold rather than a Pallas flash kernel: the kernels JAX
ships for TPU take a causal flag for equal-length queries and keys, not the KV-cache offset
and left padding this decoder needs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp

from prorank_jax.config import ATTENTION_IMPLEMENTATIONS

logger = logging.getLogger(__name__)

# Above this many scores per row and head (queries x keys), "auto" stops materialising them.
BLOCKWISE_MIN_SCORES = 1024 * 1024
# Keys per block of blockwise attention: [batch, heads, queries, 512] float32 scores per step.
BLOCK_KEYS = 512
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
# Queries per block of rowwise_attention: [heads, 32, keys] float32 scores, under 1 MB at
# 14 heads and 512 keys, so they stay in a CPU core's cache between the two products. On
# the 0.5B shape at [32 rows, 464 queries, 512 keys] (bench/RESULTS.md, issue 14) blocks of
# 32 ran in 0.94 s, of 64 in 1.1 s, 128 in 1.6 s, 256 in 2.0 s; XLA's kernel took 5.9 s.
ROW_QUERY_BLOCK = 32
# "auto" on CPU takes rowwise_attention from this many queries on (prompts); a decode step
# (one query) keeps XLA's kernel, whose scores are one row anyway.
ROWWISE_MIN_QUERIES = 16


_TARGET_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("attention_target_platform",
                                                                            default=None)


@contextlib.contextmanager
def compiling_for(platform: str) -> Iterator[None]:
    """Within the block, attention traced with "auto" chooses as it would on `platform`
    ("tpu", "gpu", "cpu") instead of on this process's default backend. jax reuses a trace
    for the same function and argument types; arguments placed on the target's devices
    (as prorank_jax.aot's are) keep a CPU trace from being reused for the target."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def target_platform() -> str:
    """The platform attention is being traced for (see compiling_for)."""
    return _TARGET_PLATFORM.get() or jax.default_backend()


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
    if backend == "cpu" and not long and queries >= ROWWISE_MIN_QUERIES:
        return "rowwise", f"cpu: {size}, {queries} >= {ROWWISE_MIN_QUERIES} queries"
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
    impl, why = choose_implementation(requested, target_platform(), q.dtype, q.shape[-1], q.shape[1], k.shape[1])
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
    if impl == "rowwise":
        return rowwise_attention(q, k, v, mask)
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


def rowwise_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, query_block: int = ROW_QUERY_BLOCK
) -> jax.Array:
    """jax.nn.dot_product_attention(q, k, v, mask=mask.dense()) at every query that is a
    real token (mask.key_valid at its own slot); the output at padding queries is
    unspecified (zero where a whole block of them is skipped).

    The CPU kernel for prompt-sized attention: one (row, block of query_block queries) at a
    time, so the [heads, block, keys] scores stay in cache instead of streaming the whole
    [batch, heads, queries, keys] matrix through memory several times (the softmax passes),
    and blocks with no real query (right padding of short rows, filler rows with no real
    token) are skipped by a lax.cond. Per block the kv heads' queries form one
    [groups x block, head_dim] matrix, so both products are plain GEMMs."""
    batch, queries, heads, dim = q.shape
    # Plain NumPy masks (an eager call) cannot be indexed by the traced row of lax.map.
    key_valid, query_slots = jnp.asarray(mask.key_valid), jnp.asarray(mask.query_slots)
    keys, kv_heads = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    block = min(query_block, queries)
    blocks = -(-queries // block)
    pad = blocks * block - queries
    # [batch * blocks, kv_heads, groups * block, dim] queries, scaled as the XLA path scales logits.
    qb = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(batch, blocks, block, kv_heads, groups, dim)
    qb = jnp.transpose(qb, (0, 1, 3, 4, 2, 5)).reshape(batch * blocks, kv_heads, groups * block, dim)
    kt = jnp.swapaxes(k, 1, 2)  # [batch, kv_heads, keys, dim]
    vt = jnp.swapaxes(v, 1, 2)
    slots = jnp.pad(query_slots, (0, pad), constant_values=-1).reshape(blocks, block)
    real = jnp.take_along_axis(key_valid, jnp.clip(query_slots, 0, keys - 1)[None].repeat(batch, 0), axis=1)
    real = real & (query_slots >= 0)[None] & (query_slots < keys)[None]
    alive = jnp.pad(real, ((0, 0), (0, pad))).reshape(batch * blocks, block).any(axis=1)
    scale = jnp.asarray(dim**-0.5, jnp.float32)
    large_negative = _large_negative()

    def one_block(item):
        index, queries_b, live = item
        row, j = index // blocks, index % blocks

        def run(_):
            kb, vb, valid = kt[row], vt[row], key_valid[row]
            visible = valid[None, :] & (jnp.arange(keys)[None, :] <= slots[j][:, None])  # [block, keys]
            logits = jnp.einsum("kmd,ksd->kms", queries_b, kb, preferred_element_type=jnp.float32) * scale
            logits = jnp.where(visible[None, None], logits.reshape(kv_heads, groups, block, keys), large_negative)
            weights = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
            total = weights.sum(axis=-1, keepdims=True)
            out = jnp.einsum("kgts,ksd->kgtd", weights.astype(v.dtype), vb, preferred_element_type=jnp.float32)
            return (out / total).astype(q.dtype)

        return jax.lax.cond(live, run, lambda _: jnp.zeros((kv_heads, groups, block, dim), q.dtype), None)

    out = jax.lax.map(one_block, (jnp.arange(batch * blocks), qb, alive))  # [batch * blocks, KV, G, block, D]
    out = jnp.transpose(out.reshape(batch, blocks, kv_heads, groups, block, dim), (0, 1, 4, 2, 3, 5))
    return out.reshape(batch, blocks * block, heads, dim)[:, :queries]
