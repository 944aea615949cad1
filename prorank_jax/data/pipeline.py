"""grain pipelines: examples in, fixed-shape numpy batches out, resumable and sharded per process.

Stage 1 batch (``make_stage1_iterator``)::

    input_ids       [B, L] int32  left-padded RerankPrompt ids
    attention_mask  [B, L] int32
    label           [B]    int32  1 if the grade is > 0, else 0
    example_mask    [B]    int32  0 for padding rows (evaluation only)

Stage 2 batch (``make_stage2_iterator``), slot 0 the positive, slots 1..k negatives::

    input_ids       [B, 1+k, L] int32
    attention_mask  [B, 1+k, L] int32
    labels          [B, 1+k]    int32  graded labels (0 in masked slots)
    doc_mask        [B, 1+k]    int32  1 for present documents
    example_mask    [B]         int32  0 for padding rows (evaluation only)

Masked slots and padding rows are all padding ids with an all-zero attention
mask; the model's finite mask value keeps them NaN-free and the losses must
weight them by ``doc_mask`` / ``example_mask``.

L is a length bucket: the smallest of ``DataConfig.buckets`` that holds the
batch's longest prompt, so a run compiles at most ``len(buckets)`` shapes.

Order of operations (per process)::

    examples -> [global shuffle, same on every process] -> this process's slice
             -> shuffle (reseeded each epoch) -> repeat(num_epochs)
             -> cut to whole batches equal on all processes (training)
                or pad with masked rows to whole batches equal on all processes (evaluation)
             -> batch + tokenize + pad -> thread prefetch

Everything before the batch is index arithmetic on a grain MapDataset, so
the iterator state is one integer (the next batch) plus the counters, and a
restored iterator yields exactly the batches the saved one would have.
Nothing is dropped or cut without being counted in ``BatchIterator.counters``
and logged once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from prorank_jax.data.examples import GroupExample, PairExample
from prorank_jax.data.sources import PATHLESS_KINDS, SOURCE_KINDS, load_examples
from prorank_jax.prompts import RerankPrompt, left_pad, round_up_length, smallest_bucket_for

logger = logging.getLogger(__name__)

STATE_VERSION = 1
SMALLEST_BUCKET = 64
COUNTER_NAMES = (
    "batches",
    "examples",  # real (non-padding) rows produced
    "padding_rows",  # masked rows added to fill evaluation batches
    "documents",  # real documents encoded (stage 1: one per example)
    "query_truncated",  # documents whose query part was cut by the prompt's rules
    "document_truncated",  # documents that were cut to fit max_length
    "negatives_dropped",  # stage 2: negatives beyond num_negatives, not used
    "masked_slots",  # stage 2: empty slots of groups with fewer than num_negatives negatives
    "dropped_examples",  # training: examples left out to keep whole, equal batches (set at start)
)


# ---------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The data half of a training config.

    Attributes:
      source: "bundled", "jsonl", "hf", "tfds" or "inverse_cloze" (self-supervised groups
        from a corpus alone; see ``sources.load_examples``).
      path: JSONL file, HF local path or hub id, tfds data_dir, or BEIR folder
        ("inverse_cloze"); None for "bundled" (and the bundled corpus for "inverse_cloze").
      tfds_name: "tfds" source only: the prepared dataset in ``path`` to read,
        "dataset/config" or "dataset", whose features follow the row schema (see
        ``rows``); None reads the bundled dataset prepared by ``tfds_bundled.prepare_bundled``
        with this config's num_negatives and seed.
      split: dataset split ("train", "test", ...).
      batch_size: examples per batch on each process.
      num_negatives: stage 2: negatives per group (k); fewer are padded with masked
        slots, more are cut (and counted). For "bundled" also the negatives the
        example builders draw per query (stage 1: extra random negatives).
      max_length: query + document token budget given to RerankPrompt (mxbai's max_length).
      buckets: sequence-length buckets, strictly increasing; None derives powers of
        two from 64 up to the prompt's longest possible length.
      seed: shuffle seed (and the bundled builders' seed).
      shuffle: shuffle globally before sharding and within the shard every epoch.
      num_epochs: passes over the data; None repeats forever (training only).
      instruction: optional reranking instruction put before every query.
      columns: HF sources: example field -> column name (see ``sources.resolve_columns``).
      inverse_cloze: "inverse_cloze" source only: keyword options of
        ``inverse_cloze.inverse_cloze_groups`` (queries_per_document, min_words, max_words,
        max_foreign_words); None keeps its defaults.
    """

    source: str = "bundled"
    path: str | None = None
    split: str = "train"
    batch_size: int = 8
    num_negatives: int = 3
    max_length: int = 512
    buckets: tuple[int, ...] | None = None
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1
    instruction: str | None = None
    columns: Mapping[str, Any] | None = None
    inverse_cloze: Mapping[str, Any] | None = None
    tfds_name: str | None = None

    def __post_init__(self):
        if self.source not in SOURCE_KINDS:
            raise ValueError(f"DataConfig.source must be one of {SOURCE_KINDS}, got {self.source!r}")
        if self.source not in PATHLESS_KINDS and not self.path:
            raise ValueError(f"DataConfig.path is required for source {self.source!r}")
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_int("num_negatives", self.num_negatives, minimum=0)
        _check_int("max_length", self.max_length, minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if self.num_epochs is not None:
            _check_int("num_epochs", self.num_epochs, minimum=1)
        if not isinstance(self.shuffle, bool):
            raise ValueError(f"DataConfig.shuffle must be a bool, got {self.shuffle!r}")
        if not isinstance(self.split, str) or not self.split:
            raise ValueError(f"DataConfig.split must be a non-empty string, got {self.split!r}")
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise ValueError(f"DataConfig.instruction must be a string or None, got {self.instruction!r}")
        if self.tfds_name is not None:
            if self.source != "tfds":
                raise ValueError(f"DataConfig.tfds_name is for source 'tfds', not {self.source!r}")
            if not isinstance(self.tfds_name, str) or not self.tfds_name.strip("/"):
                raise ValueError(f"DataConfig.tfds_name must be a dataset name like 'name/config', "
                                 f"got {self.tfds_name!r}")
        if self.buckets is not None:
            # YAML gives lists; keep a tuple so the config stays immutable and hashable.
            object.__setattr__(self, "buckets", validate_buckets(self.buckets))
        if self.columns is not None:
            if not isinstance(self.columns, Mapping):
                raise ValueError(f"DataConfig.columns must be a mapping of field -> column, got {self.columns!r}")
            object.__setattr__(self, "columns", dict(self.columns))
        if self.inverse_cloze is not None:
            from prorank_jax.data.inverse_cloze import OPTION_NAMES

            if self.source != "inverse_cloze":
                raise ValueError(f"DataConfig.inverse_cloze is for source 'inverse_cloze', not {self.source!r}")
            if not isinstance(self.inverse_cloze, Mapping):
                raise ValueError(f"DataConfig.inverse_cloze must be a mapping of options, got {self.inverse_cloze!r}")
            unknown = sorted(set(self.inverse_cloze) - set(OPTION_NAMES))
            if unknown:
                raise ValueError(f"DataConfig.inverse_cloze: unknown option(s) {unknown}; known: {list(OPTION_NAMES)}")
            for name, value in self.inverse_cloze.items():  # every option is a count
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"DataConfig.inverse_cloze.{name} must be an integer, got {value!r}")
            object.__setattr__(self, "inverse_cloze", dict(self.inverse_cloze))


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"DataConfig.{name} must be an integer >= {minimum}, got {value!r}")


def validate_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    buckets = tuple(buckets)
    if not buckets:
        raise ValueError("DataConfig.buckets must not be empty (use None for the default powers of two)")
    for b in buckets:
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
            raise ValueError(f"DataConfig.buckets must be positive integers, got {buckets!r}")
    if any(a >= b for a, b in zip(buckets, buckets[1:])):
        raise ValueError(f"DataConfig.buckets must be strictly increasing, got {buckets!r}")
    return buckets


def load_config_examples(config: DataConfig, stage: int) -> Sequence:
    """The examples ``config`` names, for stage 1 (pairs) or stage 2 (groups)."""
    return load_examples(
        config.source,
        stage,
        path=config.path,
        split=config.split,
        num_negatives=config.num_negatives,
        seed=config.seed,
        columns=config.columns,
        inverse_cloze=config.inverse_cloze,
        tfds_name=config.tfds_name,
    )


# ---------------------------------------------------------------------------
# Pure helpers: buckets, shards, batch counts


def default_buckets(max_total_length: int, model_max_length: int | None = None) -> tuple[int, ...]:
    """Powers of two from 64 below the longest prompt, then the longest prompt rounded up to 8."""
    top = round_up_length(max_total_length, 8, cap=model_max_length)
    buckets = []
    b = SMALLEST_BUCKET
    while b < top:
        buckets.append(b)
        b *= 2
    return (*buckets, top)


def shard_bounds(
    num_examples: int, shard_index: int, shard_count: int, drop_remainder: bool = False
) -> tuple[int, int]:
    """[start, end) of one contiguous shard; the first ``n % count`` shards get one extra example.

    With ``drop_remainder`` all shards have ``n // count`` examples (grain's
    ShardOptions semantics); the caller reports what that drops.
    """
    per_shard, extra = divmod(num_examples, shard_count)
    start = per_shard * shard_index
    if drop_remainder:
        return start, start + per_shard
    start += min(shard_index, extra)
    return start, start + per_shard + (1 if shard_index < extra else 0)


def resolve_shard(shard: grain.sharding.ShardOptions | None) -> grain.sharding.ShardOptions:
    # ShardByJaxProcess reads jax.process_index()/process_count(); call it late so that
    # jax.distributed.initialize() has run by then.
    return grain.sharding.ShardByJaxProcess() if shard is None else shard


# ---------------------------------------------------------------------------
# Collation: examples -> fixed-shape arrays (runs in grain's prefetch thread)


@dataclasses.dataclass(frozen=True)
class _Padding:
    """Stands for a masked row that fills an evaluation batch."""


PADDING_ROW = _Padding()


def collate_pairs(
    rows: Sequence[PairExample | _Padding],
    *,
    prompt: RerankPrompt,
    batch_size: int,
    buckets: Sequence[int],
    instruction: str | None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Stage-1 arrays and this batch's counter increments; rows beyond ``rows`` are padding."""
    real = [r for r in rows if not isinstance(r, _Padding)]
    encoded = prompt.encode_batch([r.query for r in real], [r.document for r in real], instruction=instruction)
    length = smallest_bucket_for(max((len(e) for e in encoded), default=1), buckets)
    sequences: list[tuple[int, ...]] = []
    labels = np.zeros((batch_size,), np.int32)
    example_mask = np.zeros((batch_size,), np.int32)
    it = iter(zip(real, encoded))
    for i, row in enumerate(rows):
        if isinstance(row, _Padding):
            sequences.append(())
            continue
        example, enc = next(it)
        sequences.append(enc.input_ids)
        labels[i] = int(example.label > 0)
        example_mask[i] = 1
    sequences += [()] * (batch_size - len(rows))
    input_ids, attention_mask = left_pad(sequences, length, prompt.pad_id)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "label": labels, "example_mask": example_mask}
    stats = {
        "examples": len(real),
        "padding_rows": batch_size - len(real),
        "documents": len(real),
        "query_truncated": sum(e.query_truncated for e in encoded),
        "document_truncated": sum(e.document_truncated for e in encoded),
    }
    return batch, stats


def collate_groups(
    rows: Sequence[GroupExample | _Padding],
    *,
    prompt: RerankPrompt,
    batch_size: int,
    num_negatives: int,
    buckets: Sequence[int],
    instruction: str | None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Stage-2 arrays and this batch's counter increments.

    Each group keeps its positive and first ``num_negatives`` negatives; the
    rest are counted in "negatives_dropped", missing ones become masked slots.
    """
    slots = 1 + num_negatives
    queries: list[str] = []
    documents: list[str] = []
    where: list[tuple[int, int]] = []  # (row, slot) of each encoded document
    labels = np.zeros((batch_size, slots), np.int32)
    doc_mask = np.zeros((batch_size, slots), np.int32)
    example_mask = np.zeros((batch_size,), np.int32)
    dropped = 0
    for i, row in enumerate(rows):
        if isinstance(row, _Padding):
            continue
        example_mask[i] = 1
        dropped += max(len(row.documents) - slots, 0)
        for j, (document, label) in enumerate(zip(row.documents[:slots], row.labels[:slots])):
            queries.append(row.query)
            documents.append(document)
            where.append((i, j))
            labels[i, j] = label
            doc_mask[i, j] = 1
    encoded = prompt.encode_batch(queries, documents, instruction=instruction)
    length = smallest_bucket_for(max((len(e) for e in encoded), default=1), buckets)
    sequences: list[tuple[int, ...]] = [()] * (batch_size * slots)
    for (i, j), enc in zip(where, encoded):
        sequences[i * slots + j] = enc.input_ids
    input_ids, attention_mask = left_pad(sequences, length, prompt.pad_id)
    real = int(example_mask.sum())
    batch = {
        "input_ids": input_ids.reshape(batch_size, slots, length),
        "attention_mask": attention_mask.reshape(batch_size, slots, length),
        "labels": labels,
        "doc_mask": doc_mask,
        "example_mask": example_mask,
    }
    stats = {
        "examples": real,
        "padding_rows": batch_size - real,
        "documents": len(encoded),
        "query_truncated": sum(e.query_truncated for e in encoded),
        "document_truncated": sum(e.document_truncated for e in encoded),
        "negatives_dropped": dropped,
        "masked_slots": real * slots - len(encoded),
    }
    return batch, stats


# ---------------------------------------------------------------------------
# The iterator


class BatchIterator:
    """Batches of one process, with counters and a JSON-serialisable, restorable state.

    ``counters`` accumulate over the run (and are part of the state, so a
    resumed run keeps counting); ``num_batches`` is None when repeating forever.
    """

    def __init__(self, dataset: grain.MapDataset, *, num_batches: int | None, fingerprint: dict, counters: dict,
                 read_options: grain.ReadOptions):
        self._dataset = dataset
        self._read_options = read_options
        self._iterator = dataset.to_iter_dataset(read_options).__iter__()
        self.num_batches = num_batches
        self.fingerprint = fingerprint
        self._counters = dict(counters)
        self._warned: set[str] = set()

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch, stats = next(self._iterator)
        self._counters["batches"] += 1
        for name, value in stats.items():
            self._counters[name] += int(value)
        self._warn_once(stats)
        return batch

    def _warn_once(self, stats: Mapping[str, int]) -> None:
        # The trainer is expected to log `counters`; this makes the first cut visible even if it does not.
        for name in ("query_truncated", "document_truncated", "negatives_dropped"):
            if stats.get(name) and name not in self._warned:
                self._warned.add(name)
                logger.warning(
                    "data pipeline: first %s in batch %d (%d this batch); see BatchIterator.counters for totals",
                    name, self._counters["batches"], stats[name],
                )

    def get_state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "next_batch": int(self._iterator.get_state()["next_index"]),
            "counters": self.counters,
            "fingerprint": self.fingerprint,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue from a state saved by ``get_state`` of an iterator built the same way."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a data iterator state of version {STATE_VERSION}: {state!r:.200}")
        saved = state["fingerprint"]
        differing = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
        if differing:
            details = ", ".join(f"{k}: saved {saved.get(k)!r}, now {self.fingerprint.get(k)!r}" for k in differing)
            raise ValueError(f"the saved data iterator state belongs to a different pipeline ({details})")
        next_batch = state["next_batch"]
        if self.num_batches is not None and not 0 <= next_batch <= self.num_batches:
            raise ValueError(f"saved next_batch {next_batch} is outside [0, {self.num_batches}]")
        self._iterator.set_state({"next_index": next_batch})
        self._counters = {name: int(state["counters"].get(name, 0)) for name in COUNTER_NAMES}

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def _build(
    examples: Sequence,
    *,
    stage: int,
    batch_size: int,
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    training: bool,
    shard: grain.sharding.ShardOptions | None,
    collate: Callable[[Sequence], tuple[dict, dict]],
    extra_fingerprint: dict,
    num_threads: int,
    prefetch: int,
) -> BatchIterator:
    if num_epochs is None and not training:
        raise ValueError("an evaluation iterator needs a finite num_epochs (None repeats forever)")
    shard = resolve_shard(shard)
    total = len(examples)
    if total == 0:
        raise ValueError("no examples to iterate over")

    ds = grain.MapDataset.source(examples)
    if shuffle:
        # One permutation shared by all processes (same seed), so shards are random subsets.
        ds = ds.shuffle(seed=seed)
    bounds = [shard_bounds(total, i, shard.shard_count, shard.drop_remainder) for i in range(shard.shard_count)]
    start, end = bounds[shard.shard_index]
    local = end - start
    shard_dropped = total - sum(e - s for s, e in bounds)
    if shard_dropped and shard.shard_index == 0:
        logger.warning("sharding with drop_remainder leaves out %d of %d examples", shard_dropped, total)
    ds = ds[start:end]
    if shuffle:
        ds = ds.shuffle(seed=seed + 1)  # reseeded per epoch by repeat()

    sizes = [e - s for s, e in bounds]
    dropped = 0
    if num_epochs is None:
        if local == 0:
            raise ValueError(
                f"process shard {shard.shard_index} of {shard.shard_count} has no examples ({total} in all)"
            )
        ds = ds.repeat(None)
        num_batches = None
    else:
        ds = ds.repeat(num_epochs)
        if training:
            # Every process must take the same number of steps: as many whole batches as the smallest shard gives.
            num_batches = min(sizes) * num_epochs // batch_size
            used = num_batches * batch_size
            dropped = local * num_epochs - used
            ds = ds[:used]
            if dropped:
                logger.warning(
                    "training data: %d of %d examples (x%d epochs) of process shard %d are left out to keep "
                    "%d whole batches of %d on every process",
                    dropped, local * num_epochs, num_epochs, shard.shard_index, num_batches, batch_size,
                )
        else:
            # Evaluation keeps everything: pad with masked rows up to the largest shard's whole batches.
            num_batches = math.ceil(max(sizes) * num_epochs / batch_size)
            padding = num_batches * batch_size - local * num_epochs
            if padding:
                ds = grain.MapDataset.concatenate([ds, grain.MapDataset.source([PADDING_ROW] * padding)])
    ds = ds.batch(batch_size, drop_remainder=False, batch_fn=collate)

    fingerprint = {
        "stage": stage,
        "num_examples": total,
        "batch_size": batch_size,
        "seed": seed,
        "shuffle": shuffle,
        "num_epochs": num_epochs,
        "training": training,
        "shard_index": shard.shard_index,
        "shard_count": shard.shard_count,
        **extra_fingerprint,
    }
    # Round-trip through JSON so a state read back from a checkpoint compares equal (tuples -> lists).
    fingerprint = json.loads(json.dumps(fingerprint))
    counters = dict.fromkeys(COUNTER_NAMES, 0)
    counters["dropped_examples"] = dropped + (shard_dropped if shard.shard_index == 0 else 0)
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return BatchIterator(ds, num_batches=num_batches, fingerprint=fingerprint, counters=counters,
                         read_options=read_options)


def _buckets_for(prompt: RerankPrompt, config: DataConfig) -> tuple[int, ...]:
    buckets = config.buckets or default_buckets(prompt.max_total_length, prompt.model_max_length)
    if buckets[-1] < prompt.max_total_length:
        raise ValueError(
            f"DataConfig.buckets {buckets} cannot hold the longest prompt, {prompt.max_total_length} tokens "
            f"(max_length {prompt.max_length} + template {prompt.template_length}); add a bucket >= "
            f"{prompt.max_total_length} or lower max_length"
        )
    return buckets


def _check_prompt(prompt: RerankPrompt, config: DataConfig) -> None:
    # RerankPrompt may lower max_length to fit the model, but a larger one means it was built from another config.
    if prompt.max_length > config.max_length:
        raise ValueError(
            f"the prompt's max_length {prompt.max_length} exceeds DataConfig.max_length {config.max_length}; "
            "build the RerankPrompt with the config's max_length"
        )


def make_stage1_iterator(
    examples: Sequence[PairExample],
    prompt: RerankPrompt,
    config: DataConfig,
    *,
    training: bool = True,
    shard: grain.sharding.ShardOptions | None = None,
    num_threads: int = 1,
    prefetch: int = 8,
) -> BatchIterator:
    """Stage-1 batches (see the module docstring) of ``examples`` for this process.

    ``shard`` defaults to grain's ShardByJaxProcess (jax.process_index/count);
    pass ``grain.sharding.ShardOptions(i, n)`` to choose explicitly.
    ``num_threads`` > 1 tokenizes batches in parallel threads (the tokenizer
    must then tolerate concurrent calls).
    """
    _check_prompt(prompt, config)
    buckets = _buckets_for(prompt, config)
    collate = _Collate(collate_pairs, prompt=prompt, batch_size=config.batch_size, buckets=buckets,
                       instruction=config.instruction)
    return _build(
        examples, stage=1, batch_size=config.batch_size, seed=config.seed, shuffle=config.shuffle,
        num_epochs=config.num_epochs, training=training, shard=shard, collate=collate,
        extra_fingerprint={"buckets": list(buckets), "max_length": prompt.max_length},
        num_threads=num_threads, prefetch=prefetch,
    )


def make_stage2_iterator(
    examples: Sequence[GroupExample],
    prompt: RerankPrompt,
    config: DataConfig,
    *,
    training: bool = True,
    shard: grain.sharding.ShardOptions | None = None,
    num_threads: int = 1,
    prefetch: int = 8,
) -> BatchIterator:
    """Stage-2 batches (see the module docstring) of ``examples``, groups of 1 + ``config.num_negatives``."""
    _check_prompt(prompt, config)
    buckets = _buckets_for(prompt, config)
    collate = _Collate(collate_groups, prompt=prompt, batch_size=config.batch_size, buckets=buckets,
                       num_negatives=config.num_negatives, instruction=config.instruction)
    return _build(
        examples, stage=2, batch_size=config.batch_size, seed=config.seed, shuffle=config.shuffle,
        num_epochs=config.num_epochs, training=training, shard=shard, collate=collate,
        extra_fingerprint={"buckets": list(buckets), "max_length": prompt.max_length,
                           "num_negatives": config.num_negatives},
        num_threads=num_threads, prefetch=prefetch,
    )


class _Collate:
    """A collate function with its options bound (a class, not a lambda, so grain can describe it)."""

    def __init__(self, fn: Callable, **kwargs):
        self._fn = fn
        self._kwargs = kwargs

    def __call__(self, rows: Sequence) -> tuple[dict, dict]:
        return self._fn(rows, **self._kwargs)

    def __repr__(self) -> str:
        return f"{self._fn.__name__}(batch_size={self._kwargs['batch_size']})"
