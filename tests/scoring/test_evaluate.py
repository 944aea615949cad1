"""scoring.evaluate end to end on a tiny BEIR folder, with pytrec_eval (trec_eval) as the oracle."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import pytrec_eval

from prorank_jax.data import DataError, load_beir, read_run, write_jsonl
from scoring.evaluate import evaluate
from scoring.first_stage import BM25Settings, bm25_run, rerank_candidates
from scoring.reranker import Reranker
from tests.helpers.hf_models import make_hf_model
from tests.helpers.tokenizer import build_test_tokenizer

TOP_K = 5
CORPUS = {
    "d1": ("France", "Paris is the capital and most populous city of France."),
    "d2": ("", "The river Seine flows through Paris."),
    "d3": ("Biology", "The mitochondria is the powerhouse of the cell; it produces ATP through respiration."),
    "d4": ("", "Photosynthesis converts light energy into chemical energy stored in glucose."),
    "d5": ("Animals", "The quick brown fox jumps over the lazy dog."),
    "d6": ("", "Rerankers score each query and document pair and sort candidates by that score."),
    "d7": ("Cells", "A cell uses glucose and oxygen in respiration to make energy."),
    "d8": ("", "Tokyo is the capital of Japan."),
}
QUERIES = {
    "q1": "what is the capital of France?",
    "q2": "how do cells make energy?",
    "q3": "what does a reranker do?",
    "q9": "an unjudged query",
}
QRELS = [("q1", "d1", 2), ("q1", "d2", 1), ("q1", "d8", 0), ("q2", "d3", 2), ("q2", "d7", 1), ("q2", "d4", 1),
         ("q3", "d6", 2)]
# Hand-written first stage: 6 candidates each (top 5 are reranked), ties included.
RUN_LINES = [
    "q1 Q0 d8 1 9.0 hand", "q1 Q0 d1 2 8.0 hand", "q1 Q0 d2 3 8.0 hand", "q1 Q0 d5 4 3.0 hand",
    "q1 Q0 d4 5 2.5 hand", "q1 Q0 d6 6 1.0 hand",
    "q2 Q0 d4 1 5.0 hand", "q2 Q0 d5 2 4.0 hand", "q2 Q0 d3 3 3.0 hand", "q2 Q0 d8 4 2.0 hand",
    "q2 Q0 d7 5 1.0 hand", "q2 Q0 d1 6 0.5 hand",
    "q3 Q0 d1 1 4.0 hand", "q3 Q0 d6 2 3.0 hand", "q3 Q0 d2 3 2.0 hand",
    "q9 Q0 d1 1 1.0 hand",
]


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beir")
    write_jsonl(folder / "corpus.jsonl", [{"_id": d, "title": t, "text": x} for d, (t, x) in CORPUS.items()])
    write_jsonl(folder / "queries.jsonl", [{"_id": q, "text": x} for q, x in QUERIES.items()])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in QRELS)
    )
    (folder / "first.run").write_text("\n".join(RUN_LINES) + "\n")
    return folder


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    build_test_tokenizer(folder)
    make_hf_model(folder, vocab_size=448, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, initializer_range=0.1)
    return Reranker.from_pretrained(folder, batch_size=4, show_progress=False)


def pytrec_means(qrels, run_path, k):
    with open(run_path) as f:
        run = pytrec_eval.parse_run(f)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recip_rank", "map", f"recall.{k}"})
    per_query = evaluator.evaluate(run)
    names = {"nDCG@10": "ndcg_cut_10", "RR@10": "recip_rank", "AP": "map", f"R@{k}": f"recall_{k}"}
    # every judged query has candidates here, so pytrec_eval's mean is over the same queries
    assert set(per_query) == set(qrels)
    return {ours: float(np.mean([v[theirs] for v in per_query.values()])) for ours, theirs in names.items()}, run


def test_evaluate_matches_trec_eval_on_written_runs(reranker, beir_dir, tmp_path, caplog):
    out = tmp_path / "eval"
    with caplog.at_level(logging.WARNING, logger="scoring.evaluate"):
        report = evaluate(reranker, beir_dir, "test", run=beir_dir / "first.run", top_k=TOP_K, out_dir=out)
    assert "1 run queries are not judged in this split" in caplog.text and "'q9'" in caplog.text
    data = load_beir(beir_dir, "test")

    # candidates: the first stage's top 5 in trec_eval order (ties by doc id descending), nothing else
    first = read_run(beir_dir / "first.run")
    candidates = rerank_candidates({q: first[q] for q in ("q1", "q2", "q3")}, TOP_K)
    assert candidates["q1"] == ["d8", "d2", "d1", "d5", "d4"]
    assert {q: sorted(d) for q, d in report.runs["reranked"].items()} == {q: sorted(d) for q, d in candidates.items()}
    assert report.n_queries == 3 and report.n_pairs == 5 + 5 + 3

    # reranked scores are Reranker.predict's for those pairs
    for qid, docs in candidates.items():
        expected = reranker.predict([data.queries[qid]] * len(docs), [data.corpus[d] for d in docs])
        # batches span queries in evaluate(), so rows meet other padding: equal up to float noise
        np.testing.assert_allclose([report.runs["reranked"][qid][d] for d in docs], expected, rtol=0, atol=1e-5)

    # the written files are the runs, and trec_eval's numbers on them are the report's
    assert read_run(report.files["reranked_run"]) == report.runs["reranked"]
    assert read_run(report.files["first_stage_run"]) == report.runs["first-stage"]
    for system, path in (("reranked", report.files["reranked_run"]), ("first-stage", report.files["first_stage_run"])):
        means, _ = pytrec_means(data.qrels, path, TOP_K)
        assert report.metrics[system].keys() == means.keys()
        for name in means:
            assert report.metrics[system][name] == pytest.approx(means[name], abs=1e-12), (system, name)
    # reranking only permutes the candidates
    assert report.metrics["reranked"][f"R@{TOP_K}"] == report.metrics["first-stage"][f"R@{TOP_K}"]

    saved = json.loads(report.files["metrics"].read_text())
    assert saved["metrics"] == report.metrics and saved["top_k"] == TOP_K and saved["n_pairs"] == 13
    rows = report.files["per_query"].read_text().splitlines()
    assert rows[0].split("\t") == ["query_id"] + [f"{s}:{m}" for s in ("first-stage", "reranked")
                                                   for m in report.measures]
    assert [r.split("\t")[0] for r in rows[1:]] == ["q1", "q2", "q3"]
    q2 = dict(zip(rows[0].split("\t"), rows[2].split("\t")))
    assert float(q2["reranked:nDCG@10"]) == report.per_query["reranked"]["q2"]["nDCG@10"]
    table = report.table()
    assert "first-stage" in table and "reranked" in table and "nDCG@10" in table


def test_unknown_document_in_run_file_names_file_and_line(reranker, beir_dir, tmp_path):
    bad = tmp_path / "bad.run"
    bad.write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0 x\nq2 Q0 d404 1 3.0 x\n")
    with pytest.raises(DataError, match=r"bad\.run:3: document 'd404' is not in the corpus") as err:
        evaluate(reranker, beir_dir, run=bad, top_k=TOP_K)
    assert err.value.line == 3
    with pytest.raises(ValueError, match=r"1 documents that are not in the corpus .*'q2'/'d404'"):
        evaluate(reranker, beir_dir, run={"q1": {"d1": 1.0}, "q2": {"d404": 2.0}}, top_k=TOP_K)
    with pytest.raises(TypeError, match="run must be None"):
        evaluate(reranker, beir_dir, run=[("q1", "d1")], top_k=TOP_K)


def test_bm25_first_stage_and_instruction(reranker, beir_dir, tmp_path):
    data = load_beir(beir_dir, "test")
    instruction = "find passages that answer the question"
    report = evaluate(reranker, data, run=None, top_k=3, instruction=instruction)
    assert report.first_stage == "bm25" and report.measures == ("nDCG@10", "RR@10", "AP", "R@3")
    # the default first stage is the stemmed analyser, and the report says so
    assert report.first_stage_settings == BM25Settings("stemmed").as_dict()
    bm25 = bm25_run(data.corpus, data.queries, 3, stemmer=BM25Settings("stemmed").stemmer())
    assert report.runs["bm25"] == bm25
    for qid, docs in rerank_candidates(bm25, 3).items():
        expected = reranker.predict([data.queries[qid]] * len(docs), [data.corpus[d] for d in docs],
                                    instruction=instruction)
        # batches span queries in evaluate(), so rows meet other padding: equal up to float noise
        np.testing.assert_allclose([report.runs["reranked"][qid][d] for d in docs], expected, rtol=0, atol=1e-5)
    assert report.files == {}  # no out_dir, nothing written
