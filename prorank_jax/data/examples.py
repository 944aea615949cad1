"""Training examples for both stages, built from a BeirData split and an optional first-stage run.

Labels are the raw qrels grades (0 for unjudged documents); whether "relevant"
means grade > 0 or something finer is decided by the consumer (the rewards of
stage 1, the losses of stage 2).

All builders are deterministic for a given seed. Randomness is drawn per query
from ``random.Random(f"{seed}:{query_id}")`` (string seeds are hashed with
SHA-512, independent of PYTHONHASHSEED), so adding or removing one query does
not change the examples of the others.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prorank_jax.data.beir import BeirData
from prorank_jax.data.trec import ranked_doc_ids


@dataclass(frozen=True)
class PairExample:
    """Stage 1 and pointwise scoring: one (query, document, graded label)."""

    query_id: str
    doc_id: str
    query: str
    document: str
    label: int


@dataclass(frozen=True)
class GroupExample:
    """Stage 2: ``documents[0]`` is the positive, the rest are its negatives."""

    query_id: str
    query: str
    doc_ids: tuple[str, ...]
    documents: tuple[str, ...]
    labels: tuple[int, ...]


class SkippedQueriesWarning(UserWarning):
    """Some queries produced no examples because none of their documents is judged relevant."""


def _warn_skipped(builder: str, skipped: Sequence[str]) -> None:
    if skipped:
        shown = ", ".join(repr(q) for q in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(
            f"{builder}: skipped {len(skipped)} queries with no document judged relevant (grade > 0): {shown}",
            SkippedQueriesWarning,
            stacklevel=3,
        )


def _query_rng(seed: int, query_id: str) -> random.Random:
    return random.Random(f"{seed}:{query_id}")


def _relevant(judgments: Mapping[str, int]) -> dict[str, int]:
    return {doc_id: grade for doc_id, grade in judgments.items() if grade > 0}


def mine_hard_negatives(
    run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]], *, depth: int, num: int
) -> dict[str, list[str]]:
    """For each query of ``run``: the first ``num`` documents among its top ``depth`` that are not judged relevant.

    "Not judged relevant" means unjudged or judged with grade <= 0. Documents
    are ranked as trec_eval ranks them (score descending, ties by doc id
    descending). A query may get fewer than ``num`` (or zero) negatives when
    its top ``depth`` holds fewer non-relevant documents.
    """
    if depth < 0 or num < 0:
        raise ValueError(f"mine_hard_negatives: depth and num must be >= 0, got depth={depth}, num={num}")
    mined = {}
    for query_id, doc_scores in run.items():
        relevant = _relevant(qrels.get(query_id, {}))
        top = ranked_doc_ids(doc_scores)[:depth]
        mined[query_id] = [doc_id for doc_id in top if doc_id not in relevant][:num]
    return mined


def _random_docs(rng: random.Random, doc_ids: Sequence[str], exclude: set[str], num: int) -> list[str]:
    """``num`` distinct documents of ``doc_ids`` (sorted, for determinism) not in ``exclude``.

    Rejection sampling keeps this O(num) on corpora of millions of documents;
    when few eligible documents remain, all of them are returned shuffled.
    """
    # len(doc_ids) - len(exclude) is a lower bound on the eligible count, so
    # rejection sampling below always has more than 2 * num documents to find.
    if len(doc_ids) - len(exclude) <= 2 * num:
        eligible = [doc_id for doc_id in doc_ids if doc_id not in exclude]
        rng.shuffle(eligible)
        return eligible[:num]
    picked: list[str] = []
    seen = set(exclude)
    while len(picked) < num:
        doc_id = doc_ids[rng.randrange(len(doc_ids))]
        if doc_id not in seen:
            seen.add(doc_id)
            picked.append(doc_id)
    return picked


def _check_in_corpus(data: BeirData, query_id: str, doc_ids: Sequence[str]) -> None:
    for doc_id in doc_ids:
        if doc_id not in data.corpus:
            raise ValueError(
                f"run document {doc_id!r} (query {query_id!r}) is not in the corpus; "
                "read the run with read_run(path, corpus_ids=corpus) to find the line"
            )


def _check_negative_count(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def pair_examples(
    data: BeirData,
    *,
    negatives_per_query: int,
    seed: int,
    run: Mapping[str, Mapping[str, float]] | None = None,
    hard_negative_depth: int = 100,
) -> list[PairExample]:
    """Every judged (query, document) pair plus ``negatives_per_query`` extra non-relevant documents per query.

    Judged pairs keep their grade as label, including grade 0 judgments. The
    extra negatives (label 0) are never already judged for the query: with a
    ``run`` they are its top-ranked such documents within ``hard_negative_depth``,
    topped up with random ones when the run has too few; without a run they are
    random. Queries are visited in sorted id order, judged documents in sorted
    id order, then the negatives. A query with no document judged relevant
    is skipped and reported with a SkippedQueriesWarning.
    """
    _check_negative_count("negatives_per_query", negatives_per_query)
    corpus_ids = sorted(data.corpus)
    examples: list[PairExample] = []
    skipped: list[str] = []
    for query_id in sorted(data.qrels):
        judgments = data.qrels[query_id]
        if not _relevant(judgments):
            skipped.append(query_id)
            continue
        query = data.queries[query_id]
        for doc_id in sorted(judgments):
            examples.append(PairExample(query_id, doc_id, query, data.corpus[doc_id], judgments[doc_id]))
        negatives: list[str] = []
        if run is not None:
            ranked = ranked_doc_ids(run.get(query_id, {}))[:hard_negative_depth]
            negatives = [doc_id for doc_id in ranked if doc_id not in judgments][:negatives_per_query]
            _check_in_corpus(data, query_id, negatives)
        exclude = set(judgments) | set(negatives)
        negatives += _random_docs(_query_rng(seed, query_id), corpus_ids, exclude, negatives_per_query - len(negatives))
        examples.extend(PairExample(query_id, doc_id, query, data.corpus[doc_id], 0) for doc_id in negatives)
    _warn_skipped("pair_examples", skipped)
    return examples


def group_examples(
    data: BeirData,
    *,
    num_negatives: int,
    seed: int,
    run: Mapping[str, Mapping[str, float]] | None = None,
    hard_negative_depth: int = 100,
    graded_negatives: bool = True,
) -> list[GroupExample]:
    """One group of ``1 + num_negatives`` documents per (query, relevant document).

    The rule for a positive p with grade g (every document judged > 0 is a positive once):

    1. graded negatives (when ``graded_negatives``): the query's documents
       judged with a lower non-zero grade than g, highest grade first, keeping
       their grade as label; this is what teaches fine-grained scores.
    2. hard negatives: with a ``run``, the top-ranked documents within
       ``hard_negative_depth`` that are not judged relevant (``mine_hard_negatives``).
    3. random documents not judged relevant, to fill the group.

    Negatives are taken in that order until ``num_negatives`` are found, so
    every group has the same size (a rectangular batch). Non-relevant
    documents get label = their grade if judged (0 or below), else 0. Raises
    ValueError if the corpus is too small to fill a group. A query with no
    document judged relevant is skipped and reported with a SkippedQueriesWarning.
    """
    _check_negative_count("num_negatives", num_negatives)
    corpus_ids = sorted(data.corpus)
    hard = mine_hard_negatives(run, data.qrels, depth=hard_negative_depth, num=num_negatives) if run is not None else {}
    examples: list[GroupExample] = []
    skipped: list[str] = []
    for query_id in sorted(data.qrels):
        judgments = data.qrels[query_id]
        relevant = _relevant(judgments)
        if not relevant:
            skipped.append(query_id)
            continue
        query = data.queries[query_id]
        _check_in_corpus(data, query_id, hard.get(query_id, []))
        rng = _query_rng(seed, query_id)
        # Positives by grade descending so the most informative groups come first.
        for positive in sorted(relevant, key=lambda d: (-relevant[d], d)):
            negatives: list[str] = []
            if graded_negatives:
                lower = [d for d in relevant if relevant[d] < relevant[positive]]
                negatives += sorted(lower, key=lambda d: (-relevant[d], d))[:num_negatives]
            negatives += [d for d in hard.get(query_id, []) if d not in negatives][: num_negatives - len(negatives)]
            exclude = set(relevant) | set(negatives)
            negatives += _random_docs(rng, corpus_ids, exclude, num_negatives - len(negatives))
            if len(negatives) < num_negatives:
                raise ValueError(
                    f"group_examples: query {query_id!r} has only {len(negatives)} candidate negatives "
                    f"in a corpus of {len(corpus_ids)} documents; num_negatives={num_negatives}"
                )
            doc_ids = (positive, *negatives)
            examples.append(
                GroupExample(
                    query_id=query_id,
                    query=query,
                    doc_ids=doc_ids,
                    documents=tuple(data.corpus[d] for d in doc_ids),
                    labels=tuple(judgments.get(d, 0) for d in doc_ids),
                )
            )
    _warn_skipped("group_examples", skipped)
    return examples
