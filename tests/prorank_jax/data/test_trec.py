import numpy as np
import pytest

from prorank_jax.data import DataError, ranked_doc_ids, read_run, write_run


def write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_write_run_ranks_by_score_then_doc_id_descending(tmp_path):
    run = {"q2": {"a": 0.5, "b": 2.0}, "q1": {"x": 1.0, "z": 1.0, "y": 3.0}}
    path = tmp_path / "run.trec"
    write_run(run, path, tag="bm25")
    assert path.read_text().splitlines() == [
        "q1 Q0 y 1 3.0 bm25",
        "q1 Q0 z 2 1.0 bm25",
        "q1 Q0 x 3 1.0 bm25",
        "q2 Q0 b 1 2.0 bm25",
        "q2 Q0 a 2 0.5 bm25",
    ]


def test_run_round_trip_is_exact_for_float32_and_float64_scores(tmp_path):
    rng = np.random.default_rng(0)
    run = {
        "q1": {f"d{i}": float(s) for i, s in enumerate(rng.normal(size=20).astype(np.float32))},
        "q2": {f"d{i}": float(s) for i, s in enumerate(rng.normal(size=7) * 1e-12)},
    }
    path = tmp_path / "run.trec"
    write_run(run, path)
    assert read_run(path) == run


def test_tie_order_matches_trec_eval():
    # pytrec_eval (trec_eval's C code) ignores the rank column and re-sorts by
    # score, then doc id descending: with a tie between a relevant "a" and a
    # non-relevant "b", "b" comes first and the reciprocal rank is 1/2.
    import pytrec_eval
    qrels = {"q": {"a": 1, "c": 0}}
    run = {"q": {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0}}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    trec_eval_rr = evaluator.evaluate(run)["q"]["recip_rank"]
    our_rank_of_a = ranked_doc_ids(run["q"]).index("a") + 1
    assert ranked_doc_ids(run["q"]) == ["c", "b", "a", "d"]
    assert trec_eval_rr == pytest.approx(1.0 / our_rank_of_a)


def test_read_run_accepts_any_whitespace_and_blank_lines(tmp_path):
    path = write_text(tmp_path / "run.txt", "q1 Q0 d1 1 2.5 t\n\nq1\tQ0\td2\t2\t-1e3\tt\n")
    assert read_run(path) == {"q1": {"d1": 2.5, "d2": -1000.0}}


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("q1 Q0 d1 1 2.5 t\nq1 Q0 d2 2 1.0\n", 2, "expected 6 columns"),
        ("q1 Q0 d1 1 high t\n", 1, "score must be a number, got 'high'"),
        ("q1 Q0 d1 1 nan t\n", 1, "score must be finite"),
        ("q1 Q0 d1 first 1.0 t\n", 1, "rank must be an integer"),
        ("q1 Q0 d1 1 2.0 t\nq2 Q0 d1 1 2.0 t\n\nq1 Q0 d1 3 1.0 t\n", 4, "document 'd1' listed twice for query 'q1' (first on line 1)"),
    ],
)
def test_read_run_errors_name_file_and_line(tmp_path, text, line, expected):
    path = write_text(tmp_path / "run.txt", text)
    with pytest.raises(DataError) as info:
        read_run(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert expected in str(info.value)


def test_read_run_checks_doc_ids_against_corpus(tmp_path):
    path = write_text(tmp_path / "run.txt", "q1 Q0 d1 1 2.0 t\nq1 Q0 d7 2 1.0 t\n")
    assert read_run(path, corpus_ids={"d1", "d7"}) == {"q1": {"d1": 2.0, "d7": 1.0}}
    with pytest.raises(DataError, match=r"run\.txt:2: document 'd7' is not in the corpus"):
        read_run(path, corpus_ids={"d1": "text"})


@pytest.mark.parametrize(
    ("run", "tag", "expected"),
    [
        ({"q1": {"d1": float("inf")}}, "t", "expected a finite number"),
        ({"q1": {"d 1": 1.0}}, "t", "document id 'd 1'"),
        ({"q 1": {"d1": 1.0}}, "t", "query id 'q 1'"),
        ({"q1": {"d1": 1.0}}, "my tag", "tag 'my tag'"),
    ],
)
def test_write_run_rejects_unwritable_values_and_keeps_old_file(tmp_path, run, tag, expected):
    path = tmp_path / "run.trec"
    write_run({"q0": {"d0": 1.0}}, path)
    with pytest.raises(ValueError, match=expected):
        write_run(run, path, tag=tag)
    assert read_run(path) == {"q0": {"d0": 1.0}}
    assert [p.name for p in tmp_path.iterdir()] == ["run.trec"]
