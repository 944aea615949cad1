import warnings

import pytest

from prorank_jax.data import (
    BeirData,
    GroupExample,
    PairExample,
    SkippedQueriesWarning,
    bundled_data_dir,
    group_examples,
    load_beir,
    mine_hard_negatives,
    pair_examples,
    read_run,
)

# A hand-written first-stage run: docs ranked by score (ties: doc id descending).
RUN_TEXT = """\
q1 Q0 d5 1 9.0 bm25
q1 Q0 d1 2 8.0 bm25
q1 Q0 d7 3 7.0 bm25
q1 Q0 d2 4 6.0 bm25
q1 Q0 d3 5 5.0 bm25
q1 Q0 d9 6 5.0 bm25
q1 Q0 d8 7 4.0 bm25
q2 Q0 d4 1 3.0 bm25
q2 Q0 d6 2 2.0 bm25
"""


def small_data():
    corpus = {f"d{i}": f"document number {i}" for i in range(1, 13)}
    queries = {"q1": "first query", "q2": "second query", "q3": "no positives"}
    qrels = {
        "q1": {"d1": 3, "d2": 1, "d7": 0},  # d7 judged non-relevant: a valid hard negative
        "q2": {"d4": 2},
        "q3": {"d5": 0},
    }
    return BeirData(corpus=corpus, queries=queries, qrels=qrels)


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text(RUN_TEXT)
    return read_run(path, corpus_ids=small_data().corpus)


def test_hard_negatives_are_the_top_ranked_non_relevant_docs(run):
    mined = mine_hard_negatives(run, small_data().qrels, depth=100, num=3)
    # q1 ranking: d5 d1 d7 d2 d9 d3 d8 (d9 before d3: equal score, id descending)
    assert mined == {"q1": ["d5", "d7", "d9"], "q2": ["d6"]}


def test_hard_negatives_look_only_within_depth(run):
    assert mine_hard_negatives(run, small_data().qrels, depth=4, num=5)["q1"] == ["d5", "d7"]


def test_pair_examples_keep_all_judgments_and_add_run_negatives(run):
    with pytest.warns(SkippedQueriesWarning, match=r"skipped 1 queries .*'q3'"):
        pairs = pair_examples(small_data(), negatives_per_query=2, seed=0, run=run)
    q1 = [(p.doc_id, p.label) for p in pairs if p.query_id == "q1"]
    # Judged pairs with their grades (sorted ids), then unjudged top-ranked docs.
    assert q1 == [("d1", 3), ("d2", 1), ("d7", 0), ("d5", 0), ("d9", 0)]
    q2 = [(p.doc_id, p.label) for p in pairs if p.query_id == "q2"]
    assert q2[:2] == [("d4", 2), ("d6", 0)]
    # The run had one unjudged doc for q2; the second negative is random and unjudged.
    assert len(q2) == 3 and q2[2][1] == 0 and q2[2][0] not in {"d4", "d6"}
    assert pairs[0] == PairExample("q1", "d1", "first query", "document number 1", 3)


def test_pair_examples_without_run_sample_unjudged_docs_deterministically():
    data = small_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedQueriesWarning)
        a = pair_examples(data, negatives_per_query=3, seed=1)
        b = pair_examples(data, negatives_per_query=3, seed=1)
        seeds = [pair_examples(data, negatives_per_query=3, seed=s) for s in range(2, 8)]
    assert a == b
    assert any(other != a for other in seeds)
    for query_id, judged in data.qrels.items():
        negatives = [p.doc_id for p in a if p.query_id == query_id and p.doc_id not in judged]
        assert (len(negatives) == 3 and len(set(negatives)) == 3) or query_id == "q3"


def test_group_examples_follow_the_graded_rule(run):
    with pytest.warns(SkippedQueriesWarning):
        groups = group_examples(small_data(), num_negatives=3, seed=0, run=run)
    by_positive = {(g.query_id, g.doc_ids[0]): g for g in groups}
    assert set(by_positive) == {("q1", "d1"), ("q1", "d2"), ("q2", "d4")}
    # d1 (grade 3): the lower-graded d2 first, then the top-ranked non-relevant docs.
    g = by_positive["q1", "d1"]
    assert g.doc_ids == ("d1", "d2", "d5", "d7") and g.labels == (3, 1, 0, 0)
    assert g.documents == ("document number 1", "document number 2", "document number 5", "document number 7")
    # d2 (grade 1): no lower grade exists, and d1 (relevant) is never a negative.
    assert by_positive["q1", "d2"].doc_ids == ("d2", "d5", "d7", "d9")
    # q2: one hard negative in the run, the rest random but never relevant.
    g2 = by_positive["q2", "d4"]
    assert g2.doc_ids[:2] == ("d4", "d6") and len(set(g2.doc_ids)) == 4 and g2.labels == (2, 0, 0, 0)


def test_group_examples_can_leave_graded_docs_out(run):
    with pytest.warns(SkippedQueriesWarning):
        groups = group_examples(small_data(), num_negatives=2, seed=0, run=run, graded_negatives=False)
    assert groups[0] == GroupExample("q1", "first query", ("d1", "d5", "d7"), ("document number 1", "document number 5", "document number 7"), (3, 0, 0))


def test_group_examples_without_run_are_deterministic_and_exclude_relevant():
    data = load_beir(bundled_data_dir(), "train")
    a = group_examples(data, num_negatives=4, seed=3)
    assert a == group_examples(data, num_negatives=4, seed=3)
    assert a != group_examples(data, num_negatives=4, seed=4)
    assert len(a) == sum(sum(g > 0 for g in judged.values()) for judged in data.qrels.values())
    for g in a:
        judged = data.qrels[g.query_id]
        assert len(g.doc_ids) == 5 and len(set(g.doc_ids)) == 5
        for doc_id, label in zip(g.doc_ids[1:], g.labels[1:]):
            # A negative is either not relevant, or judged lower than the positive.
            assert judged.get(doc_id, 0) == label
            assert label <= 0 or label < g.labels[0]


def test_group_examples_fail_clearly_when_corpus_is_too_small():
    data = BeirData(corpus={"d1": "a", "d2": "b"}, queries={"q": "x"}, qrels={"q": {"d1": 1}})
    with pytest.raises(ValueError, match="only 1 candidate negatives"):
        group_examples(data, num_negatives=2, seed=0)


def test_run_documents_outside_the_corpus_are_reported():
    data = BeirData(corpus={"d1": "a", "d2": "b", "d3": "c"}, queries={"q": "x"}, qrels={"q": {"d1": 1}})
    with pytest.raises(ValueError, match="run document 'zz'"):
        pair_examples(data, negatives_per_query=1, seed=0, run={"q": {"zz": 2.0}})
    with pytest.raises(ValueError, match="run document 'zz'"):
        group_examples(data, num_negatives=1, seed=0, run={"q": {"zz": 2.0}})


def test_per_query_randomness_does_not_depend_on_other_queries():
    data = load_beir(bundled_data_dir(), "train")
    fewer = BeirData(data.corpus, data.queries, {q: j for q, j in data.qrels.items() if q != "q01"})
    full = [p for p in pair_examples(data, negatives_per_query=3, seed=0) if p.query_id != "q01"]
    assert pair_examples(fewer, negatives_per_query=3, seed=0) == full
