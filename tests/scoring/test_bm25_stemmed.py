"""The default (stemmed) BM25 first stage against bm25s' own stemmed retrieval and pytrec_eval."""

from __future__ import annotations

import bm25s
import numpy as np
import pytest
import pytrec_eval
import Stemmer

from prorank_jax.data import bundled_data_dir, load_beir, write_run
from scoring.first_stage import BM25Settings
from scoring.metrics import evaluate_run

K = 20


@pytest.fixture(scope="module")
def data():
    return load_beir(bundled_data_dir(), "test")


def bm25s_stemmed_top_k(corpus, queries, k):
    """bm25s' documented stemmed pipeline: tokenize with PyStemmer, index, retrieve."""
    stemmer = Stemmer.Stemmer("english")
    doc_ids = list(corpus)
    retriever = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    retriever.index(bm25s.tokenize([corpus[d] for d in doc_ids], stopwords="en", stemmer=stemmer,
                                   show_progress=False), show_progress=False)
    qids = list(queries)
    tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False)
    results, scores = retriever.retrieve(tokens, k=k, show_progress=False)
    return {q: [(doc_ids[i], float(s)) for i, s in zip(results[n], scores[n]) if s > 0] for n, q in enumerate(qids)}


def test_stemmed_ranking_equals_bm25s_own_stemmed_retrieval(data):
    ours = BM25Settings("stemmed").run(data.corpus, data.queries, K)
    theirs = bm25s_stemmed_top_k(data.corpus, data.queries, K)
    assert set(ours) == set(theirs)
    for qid, docs in ours.items():
        expected = dict(theirs[qid])
        np.testing.assert_allclose(list(docs.values()), sorted(expected.values(), reverse=True), rtol=1e-6)
        # the same documents with the same scores; only documents tied with the k-th may differ
        boundary = min(docs.values(), default=0.0)
        above = {d for d, s in docs.items() if s > boundary * (1 + 1e-6)}
        assert above == {d for d, s in expected.items() if s > boundary * (1 + 1e-6)}
        for doc_id in docs.keys() & expected.keys():
            assert docs[doc_id] == pytest.approx(expected[doc_id], rel=1e-6)


def test_stemming_changes_the_ranking(data):
    stemmed = BM25Settings("stemmed").run(data.corpus, data.queries, K)
    unstemmed = BM25Settings("unstemmed").run(data.corpus, data.queries, K)
    assert stemmed != unstemmed


def test_metrics_equal_pytrec_eval_on_the_written_run(data, tmp_path):
    run = BM25Settings().run(data.corpus, data.queries, K)
    path = tmp_path / "bm25.run"
    write_run(run, path, tag="bm25")
    ours, per_query = evaluate_run(data.qrels, run, ("nDCG@10", "RR@10", "AP", f"R@{K}"))
    with open(path) as f:
        written = pytrec_eval.parse_run(f)
    theirs = pytrec_eval.RelevanceEvaluator(data.qrels, {"ndcg_cut.10", "map", f"recall.{K}"}).evaluate(written)
    # RR@10: trec_eval's recip_rank on the written run cut to its first 10 lines per query
    lines = path.read_text().splitlines()
    top10 = {}
    for line in lines:
        qid, _, doc_id, rank, score, _ = line.split()
        if int(rank) <= 10:
            top10.setdefault(qid, {})[doc_id] = float(score)
    for qid, values in pytrec_eval.RelevanceEvaluator(data.qrels, {"recip_rank"}).evaluate(top10).items():
        theirs[qid]["recip_rank"] = values["recip_rank"]
    assert set(theirs) == set(data.qrels)
    for ours_name, their_name in (("nDCG@10", "ndcg_cut_10"), ("RR@10", "recip_rank"), ("AP", "map"),
                                  (f"R@{K}", f"recall_{K}")):
        expected = float(np.mean([theirs[q][their_name] for q in theirs]))
        assert ours[ours_name] == pytest.approx(expected, abs=1e-12)


def test_settings_are_checked_and_described():
    with pytest.raises(ValueError, match="analyzer must be one of"):
        BM25Settings("porter")
    assert "Snowball English stemmer" in BM25Settings().describe()
    assert BM25Settings("unstemmed").as_dict()["stemmer"] is None
