"""How the Reranker cuts pairs into fixed-shape batches (pure NumPy, no model).

Whole prompts: pairs sorted by length, cut into batches of at most batch_size rows and at
most `max_batch_tokens` padded tokens (see `rows_within_budget`), each left-padded to a
`length_buckets` length, a short batch filled up to a `row_sizes` row count. Shared
prefixes: pairs grouped by query, each group's common prefix found once, groups cut into
`PrefixChunk`s whose prefixes are left-padded to a `prefix_buckets` length and whose
pairs' remainders are right-padded batches. Both keep the set of compiled shapes small
and bounded (`max_compiled_shapes`, `max_compiled_prefix_shapes`); scoring/reranker.py
explains the bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from prorank_jax.prompts import left_pad, smallest_bucket_for

DEFAULT_STEPS_PER_OCTAVE = 4
MIN_PREFIX_BUCKET = 16
# The token budget also bounds attention: rows x queries x keys <= max_batch_tokens x
# ATTENTION_SPAN, so a batch never holds more [queries, keys] scores per head than a full
# token budget of 2,048-token rows would (what an implementation that materialises them
# needs; blockwise attention holds a 512-key slice of them). Below 2,048 tokens per row the
# token count binds, above it this does: one 8K row where four 2K rows fit.
ATTENTION_SPAN = 2048
# Default max_batch_tokens per platform (padded tokens per batch, prefix cache slots
# included): what the 0.5B-1.5B Qwen rerankers run in comfortably on a 16 GB host, a 16 GB
# TPU v5e chip, and a 40-80 GB GPU (activations scale with hidden size: halve it for 7B).
DEFAULT_MAX_BATCH_TOKENS = {"cpu": 32768, "tpu": 32768, "gpu": 65536}


@dataclass(frozen=True)
class Batch:
    """Pair indices scored together, padded to `rows` x `length` (rows >= len(indices))."""

    indices: np.ndarray
    rows: int
    length: int


# ----------------------------------------------------------------------------- shapes
def length_buckets(max_total_length: int, steps_per_octave: int = DEFAULT_STEPS_PER_OCTAVE) -> tuple[int, ...]:
    """Padded lengths a batch may take: 8, 16, ..., 64, then `steps_per_octave` even steps per
    doubling (64, 80, 96, 112, 128, 160, ... for 4), ending with max_total_length rounded up to 8.

    Finer steps waste less padding (at most 1/steps_per_octave of a batch above 64 tokens)
    at the price of more shapes to compile.
    """
    if max_total_length <= 0:
        raise ValueError(f"max_total_length must be positive, got {max_total_length}")
    if steps_per_octave not in (1, 2, 4, 8):
        raise ValueError(f"steps_per_octave must be 1, 2, 4 or 8 (steps stay multiples of 8), got {steps_per_octave}")
    top = -(-max_total_length // 8) * 8
    buckets = list(range(8, 65, 8))
    octave = 64
    while octave < top:
        step = octave // steps_per_octave
        buckets += [octave + i * step for i in range(1, steps_per_octave + 1)]
        octave *= 2
    return tuple(b for b in buckets if b < top) + (top,)


def row_sizes(batch_size: int) -> tuple[int, ...]:
    """Row counts a batch may take: powers of two below batch_size, and batch_size."""
    sizes = [1 << i for i in range(max(batch_size - 1, 0).bit_length()) if (1 << i) < batch_size]
    return tuple(sizes) + (batch_size,)


def rows_for(n: int, batch_size: int) -> int:
    """Rows to pad a batch of n pairs to: the next power of two, at most batch_size."""
    return min(batch_size, 1 << max(n - 1, 0).bit_length())


def max_compiled_shapes(max_total_length: int, batch_size: int, steps_per_octave: int = DEFAULT_STEPS_PER_OCTAVE) -> int:
    return len(length_buckets(max_total_length, steps_per_octave)) * len(row_sizes(batch_size))


def default_max_batch_tokens(backend: str) -> int:
    """max_batch_tokens=None resolves to this (DEFAULT_MAX_BATCH_TOKENS; other backends as CPU)."""
    return DEFAULT_MAX_BATCH_TOKENS.get(backend, DEFAULT_MAX_BATCH_TOKENS["cpu"])


def rows_within_budget(length: int, batch_size: int, max_batch_tokens: int | None, context: int = 0) -> int:
    """Most rows a batch of `length`-token rows may take: the largest of row_sizes(batch_size)
    with rows x (context + length) <= max_batch_tokens and rows x length x (context + length)
    <= max_batch_tokens x ATTENTION_SPAN, and at least 1 (one pair is never split). `context`
    counts the cached slots each row also attends to (a shared prefix).

    Row counts stay in row_sizes(batch_size), so the budget adds no compiled shapes.
    """
    if max_batch_tokens is None:
        return batch_size
    keys = context + length
    fits = [r for r in row_sizes(batch_size)
            if r * keys <= max_batch_tokens and r * length * keys <= max_batch_tokens * ATTENTION_SPAN]
    return max(fits, default=1)


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    buckets: Sequence[int],
    max_batch_tokens: int | None = None,
    context: int = 0,
) -> list[Batch]:
    """Sort pairs by length (longest first, so a memory problem shows in the first batch) and
    cut them into batches of at most rows_within_budget(bucket of the batch's longest pair)
    pairs: long pairs go a few to a batch, short ones up to batch_size."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches = []
    start = 0
    while start < len(order):
        length = smallest_bucket_for(int(lengths[order[start]]), buckets)
        cap = rows_within_budget(length, batch_size, max_batch_tokens, context)
        idx = order[start : start + cap]
        batches.append(Batch(indices=idx, rows=rows_for(len(idx), cap), length=length))
        start += cap
    return batches


def batch_arrays(sequences: Sequence[Sequence[int]], batch: Batch, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded ids and mask of one batch; filler rows repeat the first real row so that no
    row is fully masked (their scores are discarded)."""
    rows = [sequences[i] for i in batch.indices]
    rows += [rows[0]] * (batch.rows - len(rows))
    return left_pad(rows, batch.length, pad_id)


# ----------------------------------------------------------------------------- shared prefixes
@dataclass(frozen=True)
class PrefixChunk:
    """Query groups whose shared prefixes are run together, left-padded to `rows` x `length`
    (rows >= len(groups)), and the batches of those groups' pairs, whose remainders are
    right-padded to each batch's length."""

    groups: np.ndarray
    rows: int
    length: int
    batches: list[Batch]


def prefix_buckets(max_total_length: int) -> tuple[int, ...]:
    """Padded lengths a batch of shared prefixes may take: powers of two from 16, ending with
    max_total_length rounded up to 8.

    Coarser than length_buckets on purpose: a padded prefix slot costs each pair only one
    masked attention key per layer (the prefix's MLP runs once per chunk), so halving the
    steps is nearly free and keeps the product with the remainder buckets small.
    """
    if max_total_length <= 0:
        raise ValueError(f"max_total_length must be positive, got {max_total_length}")
    top = -(-max_total_length // 8) * 8
    buckets = []
    size = MIN_PREFIX_BUCKET
    while size < top:
        buckets.append(size)
        size *= 2
    return tuple(buckets) + (top,)


def max_compiled_prefix_shapes(
    max_total_length: int, batch_size: int, steps_per_octave: int = DEFAULT_STEPS_PER_OCTAVE, packed_per_shape: int = 1
) -> int:
    """Model programs the shared-prefix path may compile: prefills (rows, prefix bucket) plus
    extends (rows, prefix bucket, remainder bucket, packed length), with at most
    packed_per_shape packed lengths per padded extend shape (PACK_STEPS when packing)."""
    rows, prefixes = len(row_sizes(batch_size)), len(prefix_buckets(max_total_length))
    return rows * prefixes * (1 + packed_per_shape * len(length_buckets(max_total_length, steps_per_octave)))


def query_groups(queries: Sequence[str]) -> np.ndarray:
    """Group index of each pair: pairs of one query (one call has one instruction) share a
    prompt prefix. Groups are numbered by first appearance."""
    index: dict[str, int] = {}
    return np.array([index.setdefault(q, len(index)) for q in queries], dtype=np.int64)


def shared_prefix_lengths(sequences: Sequence[Sequence[int]], group_of: np.ndarray) -> np.ndarray:
    """Tokens each group's prompts share from the start, at most the shortest prompt minus one.

    At least the chat prefix + query ids for groups of one query; more when the documents
    start alike. The cap leaves every pair a remainder holding its last token, where the
    score is read (a group of one pair is split just before that token).
    """
    n_groups = int(group_of.max()) + 1 if len(group_of) else 0
    reference: list[np.ndarray | None] = [None] * n_groups
    lengths = np.zeros(n_groups, np.int64)
    for seq, g in zip(sequences, group_of):
        ids = np.asarray(seq, dtype=np.int64)
        if reference[g] is None:
            reference[g], lengths[g] = ids, len(ids) - 1
            continue
        keep = min(int(lengths[g]), len(ids) - 1)
        differ = np.flatnonzero(ids[:keep] != reference[g][:keep])
        lengths[g] = differ[0] if len(differ) else keep
    return lengths


def plan_prefix_chunks(
    prefix_lengths: Sequence[int],
    rest_lengths: Sequence[int],
    group_of: np.ndarray,
    batch_size: int,
    prefix_bucket_sizes: Sequence[int],
    rest_buckets: Sequence[int],
    max_batch_tokens: int | None = None,
) -> list[PrefixChunk]:
    """Groups sorted by prefix length (longest first) and cut into chunks of at most
    rows_within_budget(prefix bucket) groups; each chunk's pairs sorted by remainder length
    and cut into batches as in plan_batches, the prefix bucket counting as each row's context
    (a batch holds its rows' copies of the prefix cache).

    A chunk's cache is used by all of its batches and then dropped, so at most one chunk's
    cache is held at a time, and a query's prefix is computed once per call.
    """
    prefix_lengths = np.asarray(prefix_lengths, dtype=np.int64)
    rest_lengths = np.asarray(rest_lengths, dtype=np.int64)
    group_order = np.argsort(-prefix_lengths, kind="stable")
    chunks = []
    start = 0
    while start < len(group_order):
        length = smallest_bucket_for(int(prefix_lengths[group_order[start]]), prefix_bucket_sizes)
        cap = rows_within_budget(length, batch_size, max_batch_tokens)
        groups = group_order[start : start + cap]
        pairs = np.flatnonzero(np.isin(group_of, groups))
        batches = [
            Batch(indices=pairs[b.indices], rows=b.rows, length=b.length)
            for b in plan_batches(rest_lengths[pairs], batch_size, rest_buckets, max_batch_tokens, context=length)
        ]
        chunks.append(PrefixChunk(groups=groups, rows=rows_for(len(groups), cap), length=length, batches=batches))
        start += cap
    return chunks


def right_pad(sequences: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids [B, length] and the real lengths [B] (a remainder's score is read at
    column length - 1; the pads after it are hidden by the causal mask)."""
    ids = np.full((len(sequences), length), pad_id, dtype=np.int32)
    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    for row, seq in enumerate(sequences):
        if len(seq) > length:
            raise ValueError(f"sequence {row} has {len(seq)} tokens, more than the padded length {length}")
        ids[row, : len(seq)] = seq
    return ids, lengths


# ----------------------------------------------------------------------------- packed tokens
# A packed batch runs only its real tokens through the dense layers (model.forward_hidden's
# token_slots), rounded up to a multiple of 1/PACK_STEPS of the padded rows x length, so
# each padded shape brings at most PACK_STEPS packed lengths. 32 steps waste at most 1/32
# of the padded batch on filler tokens (8 steps wasted up to 12.5%: on rank() of 24
# ~400-token documents, 9,472 packed rows for 7,503 real tokens, 26% more dense work),
# at the price of up to 32 compiled variants per padded shape (each compiled once).
PACK_STEPS = 32


def packed_lengths(rows: int, length: int) -> tuple[int, ...]:
    """Every token count a packed rows x length batch may run: the multiples of
    ceil(rows * length / PACK_STEPS), capped at rows * length."""
    slots = rows * length
    step = -(-slots // PACK_STEPS)
    return tuple(sorted({min(slots, k * step) for k in range(1, PACK_STEPS + 1)}))


def packed_length(real_tokens: int, rows: int, length: int) -> int:
    """Token rows a packed batch runs: the smallest of packed_lengths that holds real_tokens."""
    if not 0 < real_tokens <= rows * length:
        raise ValueError(f"a batch of {rows} x {length} slots cannot hold {real_tokens} real tokens")
    return next(n for n in packed_lengths(rows, length) if n >= real_tokens)


def token_slots(lengths: Sequence[int], rows: int, length: int, left_padded: bool) -> np.ndarray:
    """Flat slots (row * length + column) of the real tokens of a batch whose row r holds
    lengths[r] tokens, left- or right-padded; rows past len(lengths) (filler rows) get none.
    Filled up to packed_length with the out-of-range slot rows * length (filler tokens)."""
    pieces = []
    for row, n in enumerate(lengths):
        if not 0 < n <= length:
            raise ValueError(f"row {row} has {n} tokens; a row holds 1 to {length}")
        start = length - n if left_padded else 0
        pieces.append(row * length + np.arange(start, start + n, dtype=np.int32))
    real = np.concatenate(pieces)
    total = packed_length(len(real), rows, length)
    return np.concatenate([real, np.full(total - len(real), rows * length, np.int32)])
