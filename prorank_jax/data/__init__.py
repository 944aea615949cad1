"""Data formats and example builders: BEIR folders, TREC runs, JSONL, the bundled tiny dataset;
example sources (JSONL, HF datasets, tfds) and the grain batch pipelines."""

from prorank_jax.bundled import bundled_data_dir, bundled_tokenizer_dir
from prorank_jax.data.beir import (
    BeirData,
    join_title_text,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
    read_qrels_rows,
)
from prorank_jax.data.errors import DataError
from prorank_jax.data.examples import (
    GroupExample,
    PairExample,
    SkippedQueriesWarning,
    group_examples,
    mine_hard_negatives,
    pair_examples,
)
from prorank_jax.data.jsonl import read_jsonl, write_jsonl
from prorank_jax.data.sources import (
    hf_group_examples,
    hf_pair_examples,
    load_examples,
    read_group_jsonl,
    read_pair_jsonl,
    tfds_examples,
    write_group_jsonl,
    write_pair_jsonl,
)
from prorank_jax.data.trec import ranked_doc_ids, read_run, write_run
from prorank_jax.files import atomic_text_writer

# The pipeline imports grain (and with it jax), seconds of import time that
# readers of data files should not pay: loaded on first use.
_PIPELINE_EXPORTS = ("BatchIterator", "DataConfig", "make_stage1_iterator", "make_stage2_iterator")


def __getattr__(name):
    if name in _PIPELINE_EXPORTS:
        from prorank_jax.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BatchIterator",
    "BeirData",
    "DataConfig",
    "DataError",
    "GroupExample",
    "PairExample",
    "SkippedQueriesWarning",
    "atomic_text_writer",
    "bundled_data_dir",
    "bundled_tokenizer_dir",
    "group_examples",
    "hf_group_examples",
    "hf_pair_examples",
    "join_title_text",
    "load_beir",
    "load_corpus",
    "load_examples",
    "load_qrels",
    "load_queries",
    "make_stage1_iterator",
    "make_stage2_iterator",
    "mine_hard_negatives",
    "pair_examples",
    "ranked_doc_ids",
    "read_group_jsonl",
    "read_jsonl",
    "read_pair_jsonl",
    "read_qrels_rows",
    "read_run",
    "tfds_examples",
    "write_group_jsonl",
    "write_jsonl",
    "write_pair_jsonl",
    "write_run",
]
