"""Data formats and example builders: BEIR folders, TREC runs, JSONL, the bundled tiny dataset."""

from prorank_jax.data.beir import (
    BeirData,
    bundled_data_dir,
    bundled_tokenizer_dir,
    document_text,
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
from prorank_jax.data.jsonl import atomic_text_writer, read_jsonl, write_jsonl
from prorank_jax.data.trec import ranked_doc_ids, read_run, write_run

__all__ = [
    "BeirData",
    "DataError",
    "GroupExample",
    "PairExample",
    "SkippedQueriesWarning",
    "atomic_text_writer",
    "bundled_data_dir",
    "bundled_tokenizer_dir",
    "document_text",
    "group_examples",
    "load_beir",
    "load_corpus",
    "load_qrels",
    "load_queries",
    "mine_hard_negatives",
    "pair_examples",
    "ranked_doc_ids",
    "read_jsonl",
    "read_qrels_rows",
    "read_run",
    "write_jsonl",
    "write_run",
]
