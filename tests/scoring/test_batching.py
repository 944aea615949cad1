"""Token-budget batch planning (scoring/batching.py): bounds that hold for any lengths."""

import numpy as np
import pytest

from scoring.batching import (
    ATTENTION_SPAN,
    DEFAULT_MAX_BATCH_TOKENS,
    default_max_batch_tokens,
    length_buckets,
    max_compiled_shapes,
    plan_batches,
    plan_prefix_chunks,
    prefix_buckets,
    row_sizes,
    rows_within_budget,
)


def test_rows_within_budget_at_the_cpu_default():
    budget = DEFAULT_MAX_BATCH_TOKENS["cpu"]
    assert budget == default_max_batch_tokens("cpu") == 32768
    # short rows: batch_size binds; 2K: tokens bind; 4K and 8K: the rows x length^2 bound binds
    assert [rows_within_budget(n, 32, budget) for n in (128, 640, 1024, 2048, 4096, 8272, 20000)] == \
        [32, 32, 32, 16, 4, 1, 1]
    assert rows_within_budget(640, 12, budget) == 12  # batch_size need not be a power of two
    assert rows_within_budget(640, 32, None) == 32  # no budget: batch_size alone
    # a 64-token remainder on top of a 4,096-slot prefix cache: each row holds 4,160 slots
    assert rows_within_budget(64, 32, budget, context=4096) == 4
    assert default_max_batch_tokens("gpu") == 65536 and default_max_batch_tokens("rocm") == 32768


def check_plan(lengths, batch_size, budget, buckets, context=0):
    plan = plan_batches(lengths, batch_size, buckets, budget, context)
    flat = np.concatenate([b.indices for b in plan])
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every pair exactly once
    for b in plan:
        assert b.rows in row_sizes(batch_size) and len(b.indices) <= b.rows  # no new shapes
        assert max(lengths[i] for i in b.indices) <= b.length in buckets
        keys = context + b.length
        assert b.rows == 1 or b.rows * keys <= budget, (b.rows, b.length)
        assert b.rows == 1 or b.rows * b.length * keys <= budget * ATTENTION_SPAN
    return plan


@pytest.mark.parametrize("seed", range(4))
def test_plan_batches_stays_within_the_token_budget(seed):
    rng = np.random.RandomState(seed)
    buckets = length_buckets(8272)
    lengths = np.concatenate([rng.randint(20, 600, 50), rng.randint(600, 8272, 12)]).tolist()
    rng.shuffle(lengths)
    plan = check_plan(lengths, 32, 32768, buckets)
    # long pairs go few to a batch, short ones still fill batch_size rows
    assert plan[0].rows == 1 and max(len(b.indices) for b in plan) == 32
    check_plan(lengths, 8, 4096, buckets)  # a budget smaller than the longest pair: one pair per batch
    check_plan(lengths, 32, 32768, buckets, context=256)


def test_plan_without_a_budget_is_the_fixed_row_plan():
    lengths = [5, 70, 9, 200, 64, 65, 3]
    plan = plan_batches(lengths, 3, length_buckets(200), None)
    assert [b.indices.tolist() for b in plan] == [[3, 1, 5], [4, 2, 0], [6]]
    assert [(b.rows, b.length) for b in plan] == [(3, 200), (3, 64), (1, 8)]
    # with a budget of 400 tokens the 200-token bucket takes 2 rows, the 64-token one 3 (batch_size)
    plan = plan_batches(lengths, 3, length_buckets(200), 400)
    assert [b.indices.tolist() for b in plan] == [[3, 1], [5, 4, 2], [0, 6]]
    assert [(b.rows, b.length) for b in plan] == [(2, 200), (3, 80), (2, 8)]


def test_prefix_chunks_count_the_prefix_in_the_budget():
    budget = 2048
    prefix_lengths = [900, 10, 1500, 30]
    group_of = np.repeat(np.arange(4), 5)
    rest_lengths = np.random.RandomState(0).randint(1, 400, len(group_of))
    rest_buckets = length_buckets(2100)
    chunks = plan_prefix_chunks(prefix_lengths, rest_lengths, group_of, 8, prefix_buckets(2100), rest_buckets,
                                budget)
    assert sorted(np.concatenate([c.groups for c in chunks]).tolist()) == [0, 1, 2, 3]
    assert sorted(np.concatenate([b.indices for c in chunks for b in c.batches]).tolist()) == list(range(20))
    for chunk in chunks:
        assert chunk.rows == 1 or chunk.rows * chunk.length <= budget
        for b in chunk.batches:
            assert b.rows == 1 or b.rows * (chunk.length + b.length) <= budget
    # the 1,500-token prefix (bucket 2,104) runs alone; the 900-token one (bucket 1,024) takes
    # two rows, so the next-longest prefix joins it
    assert [c.groups.tolist() for c in chunks] == [[2], [0, 3], [1]]


def test_the_compiled_shape_bound_does_not_depend_on_the_budget():
    """Rows stay in row_sizes(batch_size), so the bound is the fixed-row one: 37 lengths x 6
    row counts for Qwen2.5 at max_length 8192 (8,269 tokens with the template)."""
    assert max_compiled_shapes(8269, 32) == 37 * 6
    lengths = np.random.RandomState(1).randint(1, 8269, 300).tolist()
    shapes = {(b.rows, b.length) for budget in (1024, 8192, 32768, None)
              for b in plan_batches(lengths, 32, length_buckets(8269), budget)}
    assert shapes <= {(r, n) for r in row_sizes(32) for n in length_buckets(8269)}
