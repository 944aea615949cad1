"""evaluate_run against pytrec_eval (trec_eval's own C code) on random runs with ties."""

from __future__ import annotations

import json
import logging
import math
import random

import ir_measures
import pytest

from prorank_jax.data.trec import ranked_doc_ids
import pytrec_eval

from scoring.metrics import (
    break_ties,
    evaluate_run,
    format_metrics_table,
    write_metrics_json,
    write_per_query_tsv,
)

TREC_NAMES = {"nDCG@10": "ndcg_cut_10", "AP": "map", "R@100": "recall_100", "RR": "recip_rank"}


def random_collection(seed: int):
    """Qrels and a run sharing most queries, with coarse scores (many ties) and unjudged docs."""
    rng = random.Random(seed)
    qrels, run = {}, {}
    for q in range(40):
        qid = f"q{q}"
        docs = [f"d{rng.randint(0, 400):03d}" for _ in range(rng.randint(5, 160))]
        if q % 10 != 0:  # q0, q10, ... are never ranked
            run[qid] = {d: float(rng.choice([0.5, 1.0, 1.5, 2.0, 2.5])) for d in docs}
        if q % 7 != 3:  # q3, q10, q17, ... are never judged
            judged = rng.sample(sorted(set(docs)), k=min(len(set(docs)), rng.randint(1, 12)))
            judged.append(f"d{rng.randint(401, 450)}")  # a relevant doc the run never retrieves
            qrels[qid] = {d: rng.choice([0, 0, 1, 2, 3]) for d in judged}
    qrels["q_allzero"] = {"d001": 0, "d002": 0}  # judged, nothing relevant
    run["q_allzero"] = {"d001": 1.0, "d002": 1.0}
    qrels["q_emptyrun"] = {"d001": 1}
    run["q_emptyrun"] = {}  # treated as absent (a trec_eval run file cannot hold an empty ranking)
    return qrels, run


def oracle(qrels, run):
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, set(TREC_NAMES.values()))
    # pytrec_eval would evaluate an empty dict as a ranked query; trec_eval reading a run file
    # never sees such a query, and that file semantics is the one evaluate_run follows.
    res = evaluator.evaluate({q: d for q, d in run.items() if d})
    out = {}
    for qid, vals in res.items():
        row = {name: vals[trec] for name, trec in TREC_NAMES.items()}
        # RR@10 is recip_rank when the first relevant doc is within the top 10, else 0.
        row["RR@10"] = vals["recip_rank"] if vals["recip_rank"] >= 1 / 10 else 0.0
        out[qid] = row
    return out


MEASURES = ("nDCG@10", "RR@10", "AP", "R@100", "RR")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_trec_eval_skip_mode(seed):
    qrels, run = random_collection(seed)
    expected = oracle(qrels, run)
    agg, per_query = evaluate_run(qrels, run, MEASURES, missing_queries="skip")
    assert set(per_query) == set(expected)  # exactly the queries trec_eval averages
    for qid, row in expected.items():
        for name, value in row.items():
            assert per_query[qid][name] == pytest.approx(value, abs=1e-12), (qid, name)
    for name in MEASURES:
        assert agg[name] == pytest.approx(sum(r[name] for r in expected.values()) / len(expected), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 5])
def test_zero_mode_is_trec_eval_dash_c(seed):
    qrels, run = random_collection(seed)
    expected = oracle(qrels, run)
    agg, per_query = evaluate_run(qrels, run, MEASURES)
    judged = {q for q, d in qrels.items() if d}
    assert set(per_query) == judged
    missing = judged - set(expected)
    assert missing >= {"q0", "q20", "q_emptyrun"}
    for qid in missing:
        assert all(v == 0.0 for v in per_query[qid].values())
    for name in MEASURES:
        assert agg[name] == pytest.approx(sum(r[name] for r in expected.values()) / len(judged), abs=1e-12)
    # ir_measures' own aggregate (which fills missing queries with 0) agrees.
    direct = ir_measures.calc_aggregate([ir_measures.parse_measure(m) for m in MEASURES], qrels, break_ties(run))
    for m, v in direct.items():
        assert agg[str(m)] == pytest.approx(v, abs=1e-12)


def test_ties_follow_trec_eval_for_every_measure():
    qrels = {"q": {"a": 0, "b": 1}}
    run = {"q": {"a": 1.0, "b": 1.0}}
    # trec_eval ranks b before a (doc id descending on ties).
    assert pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)["q"]["recip_rank"] == 1.0
    assert ranked_doc_ids(run["q"]) == ["b", "a"]
    # ir_measures alone would give RR@10 = 0.5 here (its msmarco provider sorts ids ascending).
    assert ir_measures.calc_aggregate([ir_measures.RR @ 10], qrels, run)[ir_measures.RR @ 10] == 0.5
    agg, _ = evaluate_run(qrels, run, ("RR@10", "RR", "nDCG@10"))
    assert agg == {"RR@10": 1.0, "RR": 1.0, "nDCG@10": 1.0}


def test_unjudged_run_queries_are_reported(caplog):
    qrels = {"q1": {"a": 1}}
    run = {"q1": {"a": 2.0}, "extra": {"a": 1.0}}
    with caplog.at_level(logging.WARNING, logger="scoring.metrics"):
        agg, per_query = evaluate_run(qrels, run, ("AP",))
    assert per_query == {"q1": {"AP": 1.0}} and agg == {"AP": 1.0}
    assert "1 run queries have no judgments" in caplog.text and "'extra'" in caplog.text


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"run\['q'\]\['a'\] = nan"):
        evaluate_run({"q": {"a": 1}}, {"q": {"a": math.nan}})
    with pytest.raises(TypeError, match=r"qrels\['q'\]\['a'\] = 0.5: relevance must be an int"):
        evaluate_run({"q": {"a": 0.5}}, {"q": {"a": 1.0}})
    with pytest.raises(ValueError, match="unknown measure 'nDCG@@10'"):
        evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0}}, ("nDCG@@10",))
    with pytest.raises(ValueError, match="'NumRet' is not averaged over queries"):
        evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0}}, ("NumRet",))
    with pytest.raises(ValueError, match="no query to evaluate"):
        evaluate_run({"q": {"a": 1}}, {"other": {"a": 1.0}}, missing_queries="skip")
    with pytest.raises(ValueError, match="missing_queries must be one of"):
        evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0}}, missing_queries="drop")


def test_format_metrics_table():
    table = format_metrics_table(
        {"bm25": {"nDCG@10": 0.31234, "RR@10": 0.5}, "reranked": {"nDCG@10": 0.45678, "AP": 0.25}}
    )
    lines = table.splitlines()
    assert lines[0].split() == ["system", "nDCG@10", "RR@10", "AP"]
    assert lines[2].split() == ["bm25", "0.3123", "0.5000", "-"]
    assert lines[3].split() == ["reranked", "0.4568", "-", "0.2500"]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule line up


def test_writers_round_trip(tmp_path):
    qrels, run = random_collection(0)
    agg, per_query = evaluate_run(qrels, run)
    path = write_metrics_json(tmp_path / "out" / "metrics.json", {"bm25": agg})
    assert json.loads(path.read_text()) == {"bm25": agg}
    tsv = write_per_query_tsv(tmp_path / "per_query.tsv", per_query)
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    assert rows[0] == ["query_id", "nDCG@10", "RR@10", "AP", "R@100"]
    assert {r[0]: dict(zip(rows[0][1:], map(float, r[1:]))) for r in rows[1:]} == per_query
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "per_query.tsv"]  # no temp files left
    with pytest.raises(ValueError, match="non-finite"):
        write_metrics_json(tmp_path / "bad.json", {"x": math.nan})
    assert not (tmp_path / "bad.json").exists()


# --- pair-level AUC -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_binary_auc_equals_sklearn_with_ties(seed):
    from sklearn.metrics import roc_auc_score

    from rl.metrics import binary_auc

    rng = random.Random(seed)
    labels = [rng.random() < 0.4 for _ in range(57)]
    labels[0], labels[1] = True, False
    scores = [float(rng.randint(-3, 3)) for _ in labels]  # coarse: many ties across classes
    assert binary_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_binary_auc_edge_cases():
    from rl.metrics import binary_auc

    assert binary_auc([2.0, 1.0, 0.0], [1, 1, 0]) == 1.0
    assert binary_auc([0.0, 1.0, 2.0], [1, 1, 0]) == 0.0
    assert binary_auc([5.0, 5.0], [1, 0]) == 0.5
    assert math.isnan(binary_auc([1.0, 2.0], [1, 1]))
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        binary_auc([1.0, 2.0], [1])
