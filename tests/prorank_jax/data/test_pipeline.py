"""grain pipelines: fixed shapes, length buckets, masked slots, resumable state, per-process shards, counters."""

import json
from collections import Counter

import grain
import numpy as np
import pytest

from prorank_jax.data import bundled_tokenizer_dir
from prorank_jax.data.examples import GroupExample, PairExample
from prorank_jax.data.pipeline import (
    DataConfig,
    default_buckets,
    load_config_examples,
    make_stage1_iterator,
    make_stage2_iterator,
    shard_bounds,
)
from prorank_jax.data.sources import bundled_group_examples, bundled_pair_examples, tfds_examples
from prorank_jax.prompts import RerankPrompt, smallest_bucket_for

MAX_LENGTH = 48
ONE_PROCESS = grain.sharding.ShardOptions(shard_index=0, shard_count=1)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_tokenizer_dir())


@pytest.fixture(scope="module")
def prompt(tokenizer):
    return RerankPrompt(tokenizer, MAX_LENGTH, 512)


@pytest.fixture(scope="module")
def pairs():
    return bundled_pair_examples("train", negatives_per_query=2, seed=0)


@pytest.fixture(scope="module")
def groups():
    return bundled_group_examples("train", num_negatives=3, seed=0)


def config(**overrides):
    return DataConfig(**{"batch_size": 8, "max_length": MAX_LENGTH, "num_negatives": 3, **overrides})


def unpadded(ids, mask):
    return tuple(int(t) for t, m in zip(ids, mask) if m)


def row_ids(batch):
    """Each real row's unpadded ids (stage 1), to identify which example it holds."""
    return [
        unpadded(ids, mask)
        for ids, mask, real in zip(batch["input_ids"], batch["attention_mask"], batch["example_mask"])
        if real
    ]


def encoded_index(prompt, examples):
    keys = [e.input_ids for e in prompt.encode_batch([x.query for x in examples], [x.document for x in examples])]
    assert len(set(keys)) == len(keys), "test needs distinct prompts to identify rows"
    return {k: i for i, k in enumerate(keys)}


# --- config and pure helpers ------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"num_negatives": -1}, "num_negatives"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"buckets": (128, 64)}, "buckets"),
        ({"buckets": ()}, "buckets"),
        ({"source": "csv"}, "source"),
        ({"source": "jsonl"}, "path"),
        ({"shuffle": 1}, "shuffle"),
        ({"max_length": True}, "max_length"),
        ({"tfds_name": "prorank_bundled/pairs"}, "tfds_name"),
        ({"source": "tfds", "path": "tfds_data", "tfds_name": ""}, "tfds_name"),
    ],
)
def test_data_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"DataConfig\.{field}"):
        DataConfig(**overrides)


def test_data_config_accepts_yaml_lists():
    cfg = DataConfig(buckets=[64, 128], columns={"query": "anchor"})
    assert cfg.buckets == (64, 128) and cfg.columns == {"query": "anchor"}


def test_buckets_and_shards_are_simple_arithmetic():
    assert default_buckets(300) == (64, 128, 256, 304)
    assert default_buckets(512) == (64, 128, 256, 512)
    assert default_buckets(40) == (40,)
    assert [smallest_bucket_for(n, (64, 128)) for n in (1, 64, 65, 128)] == [64, 64, 128, 128]
    with pytest.raises(ValueError, match="longer than the largest bucket 128"):
        smallest_bucket_for(129, (64, 128))
    assert [shard_bounds(10, i, 3) for i in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_bounds(10, i, 3, drop_remainder=True) for i in range(3)] == [(0, 3), (3, 6), (6, 9)]


def test_load_config_examples_reads_the_configured_source(groups):
    assert load_config_examples(config(), 2) == groups


# --- stage 1 ------------------------------------------------------------------------


def test_stage1_batches_are_the_prompt_ids_left_padded(prompt, pairs):
    cfg = config(shuffle=False)
    batches = list(make_stage1_iterator(pairs, prompt, cfg, training=False, shard=ONE_PROCESS))
    encoded = prompt.encode_batch([p.query for p in pairs], [p.document for p in pairs])
    assert len(batches) == -(-len(pairs) // 8)
    flat_ids = [ids for b in batches for ids in row_ids(b)]
    assert flat_ids == [e.input_ids for e in encoded]  # unshuffled: the examples in order
    labels = np.concatenate([b["label"][b["example_mask"] == 1] for b in batches])
    assert labels.tolist() == [int(p.label > 0) for p in pairs]
    for b in batches:
        assert set(b) == {"input_ids", "attention_mask", "label", "example_mask"}
        assert all(v.dtype == np.int32 for v in b.values())
        assert b["input_ids"].shape == b["attention_mask"].shape == (8, b["input_ids"].shape[1])
        # Left padding: every real prompt ends in the last column, where the score is read.
        assert (b["attention_mask"][b["example_mask"] == 1, -1] == 1).all()


def test_length_is_the_smallest_bucket_that_fits_the_batch(tokenizer, pairs):
    # Untruncated bundled prompts are 126 to 185 tokens: small batches spread over these buckets.
    roomy = RerankPrompt(tokenizer, 400, 512)
    buckets = (136, 144, 160, 512)
    cfg = config(buckets=buckets, batch_size=2, max_length=400)
    it = make_stage1_iterator(pairs, roomy, cfg, shard=ONE_PROCESS)
    seen = set()
    for b in it:
        longest = int(b["attention_mask"].sum(axis=1).max())
        length = b["input_ids"].shape[1]
        assert length == min(x for x in buckets if x >= longest)
        seen.add(length)
    assert len(seen) >= 3, "the data should exercise several buckets"


def test_buckets_must_hold_the_longest_prompt(prompt, pairs):
    with pytest.raises(ValueError, match="cannot hold the longest prompt"):
        make_stage1_iterator(pairs, prompt, config(buckets=(64,)), shard=ONE_PROCESS)


def test_prompt_built_for_a_longer_max_length_is_rejected(tokenizer, pairs):
    with pytest.raises(ValueError, match="exceeds DataConfig.max_length"):
        make_stage1_iterator(pairs, RerankPrompt(tokenizer, 2 * MAX_LENGTH, 512), config(), shard=ONE_PROCESS)


def test_training_drops_only_the_last_partial_batch_and_counts_it(prompt, pairs, caplog):
    it = make_stage1_iterator(pairs, prompt, config(num_epochs=2), shard=ONE_PROCESS)
    expected_batches, expected_dropped = divmod(2 * len(pairs), 8)
    assert expected_dropped, "pick sizes that leave a remainder"
    assert "are left out" in caplog.text
    batches = list(it)
    assert len(batches) == it.num_batches == expected_batches
    assert all(b["example_mask"].all() for b in batches)
    assert it.counters["dropped_examples"] == expected_dropped
    assert it.counters["examples"] == 2 * len(pairs) - expected_dropped


def test_evaluation_keeps_every_example_by_padding_with_masked_rows(prompt, pairs):
    it = make_stage1_iterator(pairs, prompt, config(), training=False, shard=ONE_PROCESS)
    batches = list(it)
    index = encoded_index(prompt, pairs)
    seen = [index[ids] for b in batches for ids in row_ids(b)]
    assert sorted(seen) == list(range(len(pairs)))
    assert {b["input_ids"].shape[0] for b in batches} == {8}
    assert it.counters["padding_rows"] == 8 * len(batches) - len(pairs) > 0
    last = batches[-1]
    assert (last["attention_mask"][last["example_mask"] == 0] == 0).all()
    assert it.counters["dropped_examples"] == 0


def test_shuffle_is_seeded_and_differs_per_epoch(prompt, pairs):
    def order(seed):
        it = make_stage1_iterator(pairs, prompt, config(seed=seed, num_epochs=2), training=False, shard=ONE_PROCESS)
        return [ids for b in it for ids in row_ids(b)]

    first, again, other = order(1), order(1), order(2)
    assert first == again and first != other
    n = len(pairs)
    epoch1, epoch2 = first[:n], first[n:]
    assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2


def test_truncation_is_counted_never_silent(tokenizer, pairs):
    short = RerankPrompt(tokenizer, 12, 512)
    it = make_stage1_iterator(pairs, short, config(max_length=12), training=False, shard=ONE_PROCESS)
    list(it)
    encoded = short.encode_batch([p.query for p in pairs], [p.document for p in pairs])
    assert it.counters["query_truncated"] == sum(e.query_truncated for e in encoded) > 0
    assert it.counters["document_truncated"] == sum(e.document_truncated for e in encoded) == len(pairs)

    roomy = RerankPrompt(tokenizer, 400, 512)
    it = make_stage1_iterator(pairs, roomy, config(max_length=400), training=False, shard=ONE_PROCESS)
    list(it)
    assert it.counters["query_truncated"] == it.counters["document_truncated"] == 0
    assert it.counters["documents"] == len(pairs)


# --- stage 2 ------------------------------------------------------------------------


def test_stage2_groups_have_fixed_shape_and_masked_missing_negatives(prompt):
    docs = [f"document number {i} about topic {i % 3}" for i in range(12)]
    groups = [
        GroupExample("q0", "first query", ("a", "b"), (docs[0], docs[1]), (3, 0)),  # 1 negative
        GroupExample("q1", "second query", ("a", "b", "c", "d", "e", "f"), tuple(docs[2:8]), (2, 1, 0, 0, 0, 0)),
        GroupExample("q2", "third query", ("a",), (docs[8],), (1,)),  # no negatives at all
    ]
    it = make_stage2_iterator(groups, prompt, config(batch_size=4, shuffle=False), training=False, shard=ONE_PROCESS)
    (batch,) = list(it)
    length = batch["input_ids"].shape[-1]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, 4, length)
    assert batch["doc_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[3, 0, 0, 0], [2, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert batch["example_mask"].tolist() == [1, 1, 1, 0]
    # Masked slots carry no tokens; present ones are exactly the prompt's ids.
    assert (batch["attention_mask"][batch["doc_mask"] == 0] == 0).all()
    expected = prompt.encode("second query", docs[4]).input_ids
    assert unpadded(batch["input_ids"][1, 2], batch["attention_mask"][1, 2]) == expected
    counters = it.counters
    assert counters["masked_slots"] == 2 + 3  # q0 misses 2, q2 misses 3
    assert counters["negatives_dropped"] == 2  # q1 has 5 negatives for 3 slots
    assert counters["documents"] == 2 + 4 + 1 and counters["padding_rows"] == 1


def test_stage2_keeps_every_group_in_evaluation(prompt, groups):
    it = make_stage2_iterator(groups, prompt, config(batch_size=8), training=False, shard=ONE_PROCESS)
    batches = list(it)
    real = sum(int(b["example_mask"].sum()) for b in batches)
    assert real == len(groups) and it.counters["examples"] == len(groups)
    for b in batches:
        assert b["labels"].shape == b["doc_mask"].shape == (8, 4)
        assert (b["doc_mask"][b["example_mask"] == 1] == 1).all()  # bundled groups are full
        assert (b["labels"][:, 0][b["example_mask"] == 1] > 0).all()  # slot 0 is the positive


# --- resumable state ------------------------------------------------------------------


@pytest.mark.parametrize("num_epochs", [2, None])
def test_restored_iterator_continues_with_identical_batches(prompt, groups, num_epochs):
    cfg = config(num_epochs=num_epochs, seed=7)
    it = make_stage2_iterator(groups, prompt, cfg, shard=ONE_PROCESS)
    # Stop inside the second epoch so the per-epoch reshuffle is part of what must resume.
    for _ in range(len(groups) // 8 + 2):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint would store it
    expected = [next(it) for _ in range(4)]
    expected_counters = it.counters

    resumed = make_stage2_iterator(groups, prompt, cfg, shard=ONE_PROCESS)
    resumed.set_state(state)
    got = [next(resumed) for _ in range(4)]
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert resumed.counters == expected_counters


def test_state_from_another_pipeline_is_rejected(prompt, groups):
    state = make_stage2_iterator(groups, prompt, config(seed=1), shard=ONE_PROCESS).get_state()
    other = make_stage2_iterator(groups, prompt, config(seed=2), shard=ONE_PROCESS)
    with pytest.raises(ValueError, match="different pipeline.*seed: saved 1, now 2"):
        other.set_state(state)


# --- multi-process sharding -------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_processes_read_disjoint_shards_covering_everything(prompt, pairs, shuffle):
    index = encoded_index(prompt, pairs)
    seen = []
    for process in range(2):
        shard = grain.sharding.ShardOptions(shard_index=process, shard_count=2)
        it = make_stage1_iterator(pairs, prompt, config(shuffle=shuffle), training=False, shard=shard)
        seen.append([index[ids] for b in it for ids in row_ids(b)])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(len(pairs)))
    assert abs(len(seen[0]) - len(seen[1])) <= 1


def test_processes_take_the_same_number_of_training_steps(prompt, pairs):
    # An odd count gives unequal shards; a step count that differed would hang a multi-host collective.
    odd = pairs[: 2 * 8 * 3 + 5]
    its = [
        make_stage1_iterator(odd, prompt, config(), shard=grain.sharding.ShardOptions(shard_index=p, shard_count=2))
        for p in range(2)
    ]
    counts = [len(list(it)) for it in its]
    assert counts[0] == counts[1] == its[0].num_batches == its[1].num_batches == 3


def test_default_sharding_follows_jax_processes(prompt, pairs):
    it = make_stage1_iterator(pairs, prompt, config(), training=False)  # ShardByJaxProcess: 1 process here
    assert it.fingerprint["shard_index"] == 0 and it.fingerprint["shard_count"] == 1
    assert sum(int(b["example_mask"].sum()) for b in it) == len(pairs)


# --- sources feed identical batches -------------------------------------------------------


def test_tfds_source_gives_the_same_batches_as_the_in_memory_examples(prompt, tmp_path):
    from prorank_jax.data.tfds_bundled import prepare_bundled

    names = prepare_bundled(tmp_path, ("groups",))
    lazy = tfds_examples(names["groups"], "train", data_dir=tmp_path, kind="groups")
    eager = bundled_group_examples("train", num_negatives=3, seed=0)
    cfg = config(seed=3)
    a = list(make_stage2_iterator(lazy, prompt, cfg, shard=ONE_PROCESS))
    b = list(make_stage2_iterator(eager, prompt, cfg, shard=ONE_PROCESS))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_pair_labels_are_binary_from_grades(prompt):
    graded = [PairExample("q", f"d{g}", "query", f"document graded {g}", g) for g in (0, 1, 2, 3, -1)]
    (batch,) = list(make_stage1_iterator(graded, prompt, config(shuffle=False), training=False, shard=ONE_PROCESS))
    assert batch["label"].tolist() == [0, 1, 1, 1, 0, 0, 0, 0]
    assert Counter(batch["example_mask"].tolist()) == {1: 5, 0: 3}
