import json
import pickle

import pytest

from prorank_jax.data import (
    BeirData,
    DataError,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
    read_jsonl,
    write_jsonl,
)

CORPUS = [
    {"_id": "d1", "title": "Tides", "text": "The Moon pulls the oceans."},
    {"_id": "d2", "title": "", "text": "Bread goes stale in the fridge."},
    {"_id": "d3", "text": "No title field at all."},
]
QUERIES = [{"_id": "q1", "text": "what causes tides"}, {"_id": "q2", "text": "storing bread"}, {"_id": "q3", "text": "unjudged"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td3\t0\nq2\td2\t1\n"


def write_lines(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_beir(folder, corpus=CORPUS, queries=QUERIES, qrels=QRELS, split="test"):
    folder.mkdir(exist_ok=True)
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", queries)
    write_lines(folder / "qrels" / f"{split}.tsv", qrels)
    return folder


def error_of(fn, *args):
    with pytest.raises(DataError) as info:
        fn(*args)
    return info.value


# --- jsonl -----------------------------------------------------------------


def test_jsonl_round_trip_keeps_unicode_and_line_numbers(tmp_path):
    rows = [{"a": 1, "text": "héllo — 東京"}, {"b": [1, 2]}]
    path = tmp_path / "rows.jsonl"
    assert write_jsonl(path, rows) == 2
    assert "東京" in path.read_text(encoding="utf-8")
    assert list(read_jsonl(path)) == [(1, rows[0]), (2, rows[1])]


def test_jsonl_blank_lines_are_skipped_but_counted(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", '{"a": 1}\n\n   \n{"a": 2}\n')
    assert [line for line, _ in read_jsonl(path)] == [1, 4]


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ('{"a": 1}\n{"a": \n', 2, "invalid JSON"),
        ('{"a": 1}\n\n[1, 2]\n', 3, "expected a JSON object, got list"),
        ('"just a string"\n', 1, "expected a JSON object, got str"),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path, text, line, expected):
    path = write_lines(tmp_path / "bad.jsonl", text)
    err = error_of(lambda: list(read_jsonl(path)))
    assert str(err).startswith(f"{path}:{line}: ")
    assert expected in str(err)
    assert (err.path, err.line) == (str(path), line)


def test_jsonl_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    assert str(error_of(lambda: list(read_jsonl(path)))).startswith(f"{path}:2: not valid UTF-8")


def test_write_jsonl_failure_leaves_previous_file_and_no_temp(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"old": True}])

    def rows():
        yield {"new": True}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert list(read_jsonl(path)) == [(1, {"old": True})]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_data_error_pickles_with_location():
    err = pickle.loads(pickle.dumps(DataError("a/b.tsv", "bad score", 7)))
    assert (str(err), err.path, err.line) == ("a/b.tsv:7: bad score", "a/b.tsv", 7)
    assert isinstance(err, ValueError)


# --- corpus / queries / qrels ----------------------------------------------


def test_load_corpus_joins_title_and_text_with_one_space(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", CORPUS)
    assert load_corpus(tmp_path / "corpus.jsonl") == {
        "d1": "Tides The Moon pulls the oceans.",
        "d2": "Bread goes stale in the fridge.",
        "d3": "No title field at all.",
    }


def test_load_queries_reads_ids_and_text(tmp_path):
    write_jsonl(tmp_path / "queries.jsonl", QUERIES + [{"_id": "q4", "text": "x", "metadata": {"k": 1}}])
    assert load_queries(tmp_path / "queries.jsonl") == {"q1": "what causes tides", "q2": "storing bread", "q3": "unjudged", "q4": "x"}


@pytest.mark.parametrize(
    ("rows", "line", "expected"),
    [
        ([{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}], 2, "duplicate _id 'd1' (first seen on line 1)"),
        ([{"_id": "d1", "text": "a"}, {"text": "b"}], 2, "missing field '_id'"),
        ([{"_id": 5, "text": "a"}], 1, "field '_id' must be a string"),
        ([{"_id": "d1"}], 1, "missing field 'text'"),
        ([{"_id": "d1", "text": "a", "title": None}], 1, "field 'title' must be a string"),
    ],
)
def test_corpus_errors_name_file_and_line(tmp_path, rows, line, expected):
    path = tmp_path / "corpus.jsonl"
    write_jsonl(path, rows)
    err = error_of(load_corpus, path)
    assert str(err).startswith(f"{path}:{line}: ") and expected in str(err)


@pytest.mark.parametrize(
    ("rows", "line", "expected"),
    [
        ([{"_id": "q1", "text": "a"}, {"_id": "q2", "text": "  "}], 2, "query 'q2' has empty 'text'"),
        ([{"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}], 2, "duplicate _id 'q1'"),
        ([{"_id": "", "text": "a"}], 1, "field '_id' is empty"),
    ],
)
def test_query_errors_name_file_and_line(tmp_path, rows, line, expected):
    path = tmp_path / "queries.jsonl"
    write_jsonl(path, rows)
    err = error_of(load_queries, path)
    assert str(err).startswith(f"{path}:{line}: ") and expected in str(err)


def test_load_qrels_keeps_grades_including_zero(tmp_path):
    path = write_lines(tmp_path / "qrels.tsv", QRELS + "\n")
    assert load_qrels(path) == {"q1": {"d1": 2, "d3": 0}, "q2": {"d2": 1}}


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("q1\td1\t1\n", 1, "expected the header"),
        ("query-id\tcorpus-id\tscore\nq1\td1\n", 2, "expected 3 tab-separated columns"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\t9\n", 2, "got 4"),
        ("query-id\tcorpus-id\tscore\nq1 d1 1\n", 2, "got 1"),
        ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", 2, "score must be an integer relevance grade, got 'high'"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t0.5\n", 2, "got '0.5'"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td1\t1\n\nq1\td1\t1\n", 5, "duplicate judgment for query 'q1', document 'd1' (first on line 2)"),
        ("query-id\tcorpus-id\tscore\n\td1\t1\n", 2, "empty query-id"),
    ],
)
def test_qrels_errors_name_file_and_line(tmp_path, text, line, expected):
    path = write_lines(tmp_path / "qrels.tsv", text)
    err = error_of(load_qrels, path)
    assert str(err).startswith(f"{path}:{line}: ") and expected in str(err)


def test_empty_qrels_file_is_an_error(tmp_path):
    path = write_lines(tmp_path / "qrels.tsv", "\n")
    assert str(error_of(load_qrels, path)).startswith(f"{path}: empty qrels file")


# --- load_beir -------------------------------------------------------------


def test_load_beir_keeps_only_the_split_queries(tmp_path):
    data = load_beir(make_beir(tmp_path / "ds"), "test")
    assert data == BeirData(
        corpus=load_corpus(tmp_path / "ds" / "corpus.jsonl"),
        queries={"q1": "what causes tides", "q2": "storing bread"},
        qrels={"q1": {"d1": 2, "d3": 0}, "q2": {"d2": 1}},
    )


def test_load_beir_unknown_query_id_names_qrels_line_and_id(tmp_path):
    folder = make_beir(tmp_path / "ds", qrels=QRELS + "q9\td1\t1\n")
    err = error_of(load_beir, folder, "test")
    assert str(err).startswith(f"{folder / 'qrels' / 'test.tsv'}:5: query-id 'q9' is not in")


def test_load_beir_unknown_doc_id_names_qrels_line_and_id(tmp_path):
    folder = make_beir(tmp_path / "ds", qrels="query-id\tcorpus-id\tscore\nq1\tdX\t1\n")
    err = error_of(load_beir, folder, "test")
    assert str(err).startswith(f"{folder / 'qrels' / 'test.tsv'}:2: corpus-id 'dX' is not in")


def test_load_beir_missing_split_lists_available_splits(tmp_path):
    folder = make_beir(tmp_path / "ds", split="dev")
    err = error_of(load_beir, folder, "test")
    assert str(err).startswith(f"{folder / 'qrels' / 'test.tsv'}: missing qrels file")
    assert "splits found: dev" in str(err)


def test_load_beir_reports_errors_of_each_file(tmp_path):
    folder = make_beir(tmp_path / "ds", queries=QUERIES + [{"_id": "q1", "text": "again"}])
    err = error_of(load_beir, folder, "test")
    assert str(err).startswith(f"{folder / 'queries.jsonl'}:4: duplicate _id 'q1'")


def test_load_beir_round_trips_written_files(tmp_path):
    folder = make_beir(tmp_path / "a")
    first = load_beir(folder, "test")
    rows = [{"_id": d, "text": t} for d, t in first.corpus.items()]
    again = make_beir(tmp_path / "b", corpus=rows)
    assert load_beir(again, "test") == first
    assert json.loads((again / "corpus.jsonl").read_text().splitlines()[0]) == rows[0]
