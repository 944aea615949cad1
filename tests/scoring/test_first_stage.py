"""BM25 first stage: sensible rankings, Lucene BM25 formula, deterministic trec_eval order."""

from __future__ import annotations

import logging
import math
import random
import re
from collections import Counter

import pytest
from bm25s.stopwords import STOPWORDS_EN

from scoring.first_stage import bm25_run, rerank_candidates

CORPUS = {
    "paris": "Paris is the capital and largest city of France, on the river Seine.",
    "berlin": "Berlin is the capital of Germany and its most populous city.",
    "mito": "The mitochondria is the powerhouse of the cell, producing ATP by respiration.",
    "photo": "Photosynthesis in plants converts sunlight, water and carbon dioxide into glucose.",
    "fox": "The quick brown fox jumps over the lazy dog.",
    "volcano": "A volcano erupts when magma rises through the crust and reaches the surface.",
    "jupiter": "Jupiter is the largest planet in the solar system, a gas giant with many moons.",
    "empty": "",
}
QUERIES = {
    "q_paris": "capital of France",
    "q_mito": "what is the powerhouse of the cell",
    "q_photo": "how do plants make glucose from sunlight",
    "q_jupiter": "largest planet solar system",
    "q_volcano": "why do volcanoes erupt magma",
}


def test_obvious_document_ranks_first():
    run = bm25_run(CORPUS, QUERIES, k=3)
    assert {q: next(iter(docs)) for q, docs in run.items()} == {
        "q_paris": "paris",
        "q_mito": "mito",
        "q_photo": "photo",
        "q_jupiter": "jupiter",
        "q_volcano": "volcano",
    }
    for docs in run.values():
        scores = list(docs.values())
        assert 1 <= len(scores) <= 3 and scores == sorted(scores, reverse=True) and min(scores) > 0


def _terms(text):
    return [t for t in re.findall(r"(?u)\b\w\w+\b", text.lower()) if t not in STOPWORDS_EN]


def lucene_bm25(corpus, query, k1=1.5, b=0.75):
    """Lucene (>= 8) BM25 written out: idf = ln(1 + (N - df + .5) / (df + .5)), and no (k1 + 1)
    factor in the numerator (Lucene dropped that constant; it does not change rankings)."""
    docs = {d: Counter(_terms(t)) for d, t in corpus.items()}
    n = len(docs)
    avgdl = sum(sum(c.values()) for c in docs.values()) / n
    scores = {}
    for d, tf in docs.items():
        dl = sum(tf.values())
        s = 0.0
        for term in set(_terms(query)):
            df = sum(1 for c in docs.values() if term in c)
            if tf[term]:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                s += idf * tf[term] / (tf[term] + k1 * (1 - b + b * dl / avgdl))
        scores[d] = s
    return scores


def test_scores_follow_lucene_bm25():
    run = bm25_run(CORPUS, QUERIES, k=len(CORPUS))
    for qid, query in QUERIES.items():
        expected = {d: s for d, s in lucene_bm25(CORPUS, query).items() if s > 0}
        assert set(run[qid]) == set(expected)
        for d, s in expected.items():
            assert run[qid][d] == pytest.approx(s, rel=1e-5)


def test_deterministic_and_independent_of_insertion_order():
    first = bm25_run(CORPUS, QUERIES, k=4)
    items = list(CORPUS.items())
    random.Random(0).shuffle(items)
    second = bm25_run(dict(items), QUERIES, k=4)
    assert first == second
    assert [list(d) for d in first.values()] == [list(d) for d in second.values()]


def test_ties_broken_like_trec_eval():
    corpus = {"a": "solar wind", "c": "solar wind", "b": "solar wind", "z": "lunar tide"}
    run = bm25_run(corpus, {"q": "solar"}, k=2)
    assert list(run["q"]) == ["c", "b"]  # equal scores: doc id descending, as trec_eval ranks them
    assert rerank_candidates({"q": {"a": 1.0, "c": 1.0, "b": 1.0, "z": 2.0}}, k=3) == {"q": ["z", "c", "b"]}


def test_unmatched_query_gets_no_candidates_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="scoring.first_stage"):
        run = bm25_run(CORPUS, {"q_none": "xylophone quartz", "q_stop": "the of and"}, k=5)
    assert run == {"q_none": {}, "q_stop": {}}
    assert "2 queries share no indexed term" in caplog.text


def test_rerank_candidates_top_k():
    run = bm25_run(CORPUS, QUERIES, k=5)
    cands = rerank_candidates(run, k=2)
    assert all(c == list(run[q])[:2] for q, c in cands.items())
    with pytest.raises(ValueError, match="k must be a positive int"):
        rerank_candidates(run, k=0)
    with pytest.raises(ValueError, match=r"run\['q'\]\['d'\] = inf"):
        rerank_candidates({"q": {"d": math.inf}}, k=1)
    with pytest.raises(TypeError, match=r"corpus\['x'\] must map a str id to a str text"):
        bm25_run({"x": None}, QUERIES, k=1)
