"""First-stage retrieval (BM25 via bm25s) and the candidate lists handed to the reranker.

BM25 here: bm25s "lucene" variant (k1=1.5, b=0.75 by default), scikit-learn style word
splitting (lower-cased, tokens of 2+ word characters), bm25s' bundled English stopword
list. Scores follow Lucene >= 8: idf = ln(1 + (N - df + .5)/(df + .5)) and no (k1 + 1)
factor in the numerator.

Two analysers (``BM25Settings.analyzer``):
  * "stemmed" (the default first stage): the words above stemmed with the Snowball English
    stemmer (PyStemmer). This is bm25s' own BEIR benchmark set-up, whose published nDCG@10
    (e.g. SciFact 0.687) sits next to Pyserini's flat BM25 (0.679; Porter stemmer, Lucene
    stopwords): stemming is most of the gap between an unstemmed BM25 and those figures.
  * "unstemmed": the same without a stemmer (what `bm25_run` does when given no stemmer).

Ordering everywhere is trec_eval's (score descending, ties by doc id descending), so the
top-k handed to the reranker is exactly the top-k trec_eval scores for the first stage.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import bm25s
import numpy as np

from prorank_jax.data.trec import ranked_doc_ids
from scoring.metrics import validate_run

logger = logging.getLogger(__name__)
# bm25s sets its own logger to DEBUG, which floods every evaluation with index-building lines.
logging.getLogger("bm25s").setLevel(logging.WARNING)


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")


def _check_texts(name: str, texts: Mapping[str, str]) -> None:
    if not isinstance(texts, Mapping):
        raise TypeError(f"{name} must be a mapping id -> text, got {type(texts).__name__}")
    for key, text in texts.items():
        if not isinstance(key, str) or not isinstance(text, str):
            raise TypeError(f"{name}[{key!r}] must map a str id to a str text, got {type(text).__name__}")


def _tokenize(texts: list[str], stemmer: Callable | None) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)


def top_k_trec_order(scores: np.ndarray, doc_ids: list[str], k: int) -> list[tuple[str, float]]:
    """The k best (doc id, score) with score > 0, in trec_eval order.

    Zero-score documents share no term with the query; like Lucene we do not return them.
    """
    positive = np.flatnonzero(scores > 0)
    if len(positive) > k:
        # Keep everything tied with the k-th best so the tie-break below sees all of them.
        kth = np.partition(scores[positive], len(positive) - k)[len(positive) - k]
        positive = positive[scores[positive] >= kth]
    cand = {doc_ids[i]: float(scores[i]) for i in positive}
    return [(d, cand[d]) for d in ranked_doc_ids(cand)[:k]]


def bm25_run(
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    k: int,
    *,
    k1: float = 1.5,
    b: float = 0.75,
    method: str = "lucene",
    stemmer: Callable | None = None,
) -> dict[str, dict[str, float]]:
    """BM25 top-k per query: {query_id: {doc_id: score}}, dicts in trec_eval rank order.

    A query whose terms all miss the corpus vocabulary (or are stopwords) gets an empty
    dict and a warning; documents scoring 0 are never returned.
    """
    _check_k(k)
    _check_texts("corpus", corpus)
    _check_texts("queries", queries)
    if not corpus:
        raise ValueError("corpus is empty; BM25 needs at least one document")
    doc_ids = list(corpus)
    retriever = bm25s.BM25(k1=k1, b=b, method=method)
    retriever.index(_tokenize([corpus[d] for d in doc_ids], stemmer), show_progress=False)

    qids = list(queries)
    run: dict[str, dict[str, float]] = {}
    no_match = []
    for qid, tokens in zip(qids, _tokenize([queries[q] for q in qids], stemmer)):
        ids = retriever.get_tokens_ids(tokens)
        if not ids:
            no_match.append(qid)
            run[qid] = {}
            continue
        scores = np.asarray(retriever.get_scores_from_ids(ids))
        run[qid] = dict(top_k_trec_order(scores, doc_ids, k))
    if no_match:
        logger.warning(
            "%d queries share no indexed term with the corpus and get no BM25 candidates: %s",
            len(no_match),
            ", ".join(map(repr, no_match[:5])) + (" ..." if len(no_match) > 5 else ""),
        )
    return run


ANALYZERS = ("stemmed", "unstemmed")


def english_stemmer() -> Callable[[list[str]], list[str]]:
    """Snowball English (PyStemmer), the stemmer of bm25s' BEIR benchmarks."""
    import Stemmer

    return Stemmer.Stemmer("english").stemWords


@dataclass(frozen=True)
class BM25Settings:
    """Which BM25 first stage runs; `describe()` is what evaluation reports print."""

    analyzer: str = "stemmed"
    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"

    def __post_init__(self):
        if self.analyzer not in ANALYZERS:
            raise ValueError(f"BM25 analyzer must be one of {ANALYZERS}, got {self.analyzer!r}")
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")

    def stemmer(self) -> Callable | None:
        return english_stemmer() if self.analyzer == "stemmed" else None

    def run(self, corpus: Mapping[str, str], queries: Mapping[str, str], k: int) -> dict[str, dict[str, float]]:
        return bm25_run(corpus, queries, k, k1=self.k1, b=self.b, method=self.method, stemmer=self.stemmer())

    def as_dict(self) -> dict:
        return {"retriever": "bm25s", **asdict(self), "stopwords": "en",
                "stemmer": "snowball-english (PyStemmer)" if self.analyzer == "stemmed" else None}

    def describe(self) -> str:
        stem = "Snowball English stemmer" if self.analyzer == "stemmed" else "no stemmer"
        return f"BM25 {self.analyzer} (bm25s {self.method}, k1={self.k1}, b={self.b}, English stopwords, {stem})"


def rerank_candidates(run: Mapping[str, Mapping[str, float]], k: int) -> dict[str, list[str]]:
    """Top-k doc ids of each query of a first-stage run, in trec_eval order (deterministic)."""
    _check_k(k)
    validate_run(run)
    return {qid: ranked_doc_ids(docs)[:k] for qid, docs in run.items()}
