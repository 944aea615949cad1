"""The Reranker's bounds on compiled shapes (scoring/reranker.py's docstring), worked out for
its example, Qwen2.5 at max_length=8192 (8192 + the 77-token template) and batch_size=32, by
listing every shape the batching functions allow and counting them."""

from __future__ import annotations

from scoring.batching import (
    PACK_STEPS,
    length_buckets,
    max_compiled_prefix_shapes,
    max_compiled_shapes,
    packed_lengths,
    prefix_buckets,
    row_sizes,
)

L, B = 8192 + 77, 32


def test_whole_prompt_bound_counts_every_padded_and_packed_shape():
    padded = {(r, n) for r in row_sizes(B) for n in length_buckets(L)}
    assert max_compiled_shapes(L, B) == len(padded)
    packed = {(r, n, t) for r, n in padded for t in packed_lengths(r, n)}
    assert len(padded) < len(packed) <= PACK_STEPS * max_compiled_shapes(L, B)


def test_shared_prefix_bound_counts_every_prefill_and_extend_shape():
    prefills = {(r, p) for r in row_sizes(B) for p in prefix_buckets(L)}
    extends = {(r, p, n) for r, p in prefills for n in length_buckets(L)}
    assert max_compiled_prefix_shapes(L, B) == len(prefills) + len(extends)
    packed = {(r, p, n, t) for r, p, n in extends for t in packed_lengths(r, n)}
    assert len(extends) < len(packed)
    assert len(prefills) + len(packed) <= max_compiled_prefix_shapes(L, B, packed_per_shape=PACK_STEPS)
