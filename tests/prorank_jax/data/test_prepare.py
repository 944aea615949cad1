"""`prorank prepare-data`: files both stages read back, hard negatives, overlap guard, summary, bad input."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from launch.prepare_data import main as prepare_main
from prorank_jax.data import bundled_data_dir, load_beir, load_examples, read_run, write_jsonl
from prorank_jax.data.prepare import (
    PrepareOptions,
    QueryOverlapError,
    check_no_overlap,
    prepare_beir,
    write_prepared,
)
from scoring.first_stage import BM25Settings

BUNDLED = bundled_data_dir()


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    """prepare-data on the bundled train split, BM25 hard negatives, guarded against its test split."""
    out = tmp_path_factory.mktemp("prepared")
    code = prepare_main(["--beir", str(BUNDLED), "--split", "train", "--out", str(out), "--depth", "20",
                         "--num-negatives", "5", "--pair-negatives", "4", "--seed", "3",
                         "--exclude-queries-of", f"{BUNDLED}:test"])
    assert code == 0
    return out


def test_files_are_read_back_by_both_stages_sources(prepared_dir):
    data = load_beir(BUNDLED, "train")
    bm25 = BM25Settings().run(data.corpus, data.queries, 20)
    expected = prepare_beir(data, run=bm25, options=PrepareOptions(num_negatives=5, pair_negatives=4, depth=20, seed=3))
    pairs = load_examples("jsonl", 1, path=prepared_dir / "stage1" / "train_pairs.jsonl")
    groups = load_examples("jsonl", 2, path=prepared_dir / "stage2" / "train_groups.jsonl")
    assert pairs == expected.pairs and groups == expected.groups
    assert all(len(g.documents) == 6 for g in groups)
    # every text is the corpus / query text of its id
    assert all(p.document == data.corpus[p.doc_id] and p.query == data.queries[p.query_id] for p in pairs)
    assert all(g.documents == tuple(data.corpus[d] for d in g.doc_ids) for g in groups)


def test_hard_negatives_are_never_judged_relevant_and_come_from_bm25(prepared_dir):
    data = load_beir(BUNDLED, "train")
    bm25 = BM25Settings().run(data.corpus, data.queries, 20)
    groups = load_examples("jsonl", 2, path=prepared_dir / "stage2" / "train_groups.jsonl")
    pairs = load_examples("jsonl", 1, path=prepared_dir / "stage1" / "train_pairs.jsonl")
    from_bm25 = 0
    for g in groups:
        relevant = {d for d, grade in data.qrels[g.query_id].items() if grade > 0}
        for doc_id, label in zip(g.doc_ids[1:], g.labels[1:]):
            if label == 0:
                assert doc_id not in relevant
                from_bm25 += doc_id in bm25[g.query_id]
    for p in pairs:
        if p.label == 0:
            assert data.qrels[p.query_id].get(p.doc_id, 0) <= 0
    assert from_bm25 > len(groups)  # the label-0 negatives are mostly BM25's, not random


def test_summary_counts_equal_the_files(prepared_dir):
    summary = json.loads((prepared_dir / "train_summary.json").read_text())
    pair_rows = [json.loads(line) for line in (prepared_dir / "stage1" / "train_pairs.jsonl").read_text().splitlines()]
    group_rows = [json.loads(line) for line in (prepared_dir / "stage2" / "train_groups.jsonl").read_text().splitlines()]
    s1, s2 = summary["stage1"], summary["stage2"]
    assert s1["pairs"] == len(pair_rows)
    assert s1["queries"] == len({r["query_id"] for r in pair_rows})
    assert s1["positives"] == sum(r["label"] > 0 for r in pair_rows)
    assert s1["pairs_per_label"] == {str(k): v for k, v in Counter(r["label"] for r in pair_rows).items()}
    negatives = Counter(r["query_id"] for r in pair_rows if r["label"] == 0)
    assert s1["negatives_per_query"]["mean"] == round(sum(negatives.values()) / s1["queries"], 4)
    assert s2["groups"] == len(group_rows) and s2["queries"] == len({r["query_id"] for r in group_rows})
    assert s2["labels"] == {str(k): v for k, v in Counter(
        x for r in group_rows for x in [r["positive_label"], *r["negative_labels"]]).items()}
    assert summary["settings"]["first_stage"]["analyzer"] == "stemmed"


def test_label_balance_keeps_one_negative_per_positive(tmp_path):
    assert prepare_main(["--beir", str(BUNDLED), "--out", str(tmp_path), "--negatives", "random",
                         "--negatives-per-positive", "1"]) == 0
    pairs = load_examples("jsonl", 1, path=tmp_path / "stage1" / "train_pairs.jsonl")
    per_query = Counter((p.query_id, p.label > 0) for p in pairs)
    for query_id in {p.query_id for p in pairs}:
        assert per_query[(query_id, False)] == per_query[(query_id, True)]


def test_a_given_trec_run_supplies_the_hard_negatives(tmp_path):
    data = load_beir(BUNDLED, "train")
    # a run that ranks the query's judged-relevant documents first, then 7 unjudged ones from d200 on
    lines = []
    for q, docs in data.qrels.items():
        unjudged = [d for d in sorted(data.corpus) if d >= "d200" and d not in docs][:7]
        ranked = [d for d in docs if docs[d] > 0] + unjudged
        lines += [f"{q} Q0 {d} {r} {100 - r} hand" for r, d in enumerate(ranked, start=1)]
    (tmp_path / "hand.run").write_text("\n".join(lines) + "\n")
    assert prepare_main(["--beir", str(BUNDLED), "--out", str(tmp_path / "out"), "--negatives", "run",
                         "--run", str(tmp_path / "hand.run"), "--num-negatives", "5", "--depth", "100"]) == 0
    run = read_run(tmp_path / "hand.run")
    for g in load_examples("jsonl", 2, path=tmp_path / "out" / "stage2" / "train_groups.jsonl"):
        relevant = {d for d, grade in data.qrels[g.query_id].items() if grade > 0}
        hard = [d for d in g.doc_ids[1:] if d not in relevant]
        # at most 3 graded negatives (4 relevant documents at most), so >= 2 come from the run
        assert len(hard) >= 2 and all(d in run[g.query_id] for d in hard)


def _copy_beir(tmp_path, name="beir"):
    folder = tmp_path / name
    shutil.copytree(BUNDLED, folder, ignore=shutil.ignore_patterns("tokenizer", "warm_start", "*.json", "*.md"))
    return folder


def test_overlap_guard_refuses_and_names_ids_and_texts(tmp_path, capsys):
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    write_jsonl(evaluation / "corpus.jsonl", [{"_id": "x1", "text": "a document"}])
    # q02's text with other case and spacing, under another id; a non-overlapping query too
    write_jsonl(evaluation / "queries.jsonl", [{"_id": "e7", "text": "Why is  the SKY blue"},
                                              {"_id": "e8", "text": "an unrelated question"}])
    (evaluation / "qrels").mkdir()
    (evaluation / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\ne7\tx1\t1\ne8\tx1\t1\n")
    out = tmp_path / "out"
    assert prepare_main(["--beir", str(BUNDLED), "--out", str(out), "--negatives", "random",
                         "--exclude-queries-of", f"{BUNDLED}:test", "--exclude-queries-of", f"{evaluation}:test"]) == 2
    err = capsys.readouterr().err
    assert "1 training queries appear in an evaluation split" in err
    assert "'q02'" in err and "'e7'" in err and "why is the sky blue" in err and "e8" not in err
    assert not out.exists()  # nothing written

    # the same folder's own train split, by id
    train = load_beir(BUNDLED, "train").queries
    with pytest.raises(QueryOverlapError, match=r"(?s)31 training queries.*'q01'"):
        check_no_overlap(train, [(BUNDLED, "train")], source_folder=BUNDLED)


def test_malformed_inputs_name_file_and_line(tmp_path, capsys):
    folder = _copy_beir(tmp_path)
    assert prepare_main(["--beir", str(folder), "--split", "dev", "--out", str(tmp_path / "o")]) == 2
    assert f"{folder / 'qrels' / 'dev.tsv'}: missing qrels file" in capsys.readouterr().err

    qrels = folder / "qrels" / "train.tsv"
    qrels.write_text(qrels.read_text() + "q01\td999\t1\n")
    line = len(qrels.read_text().splitlines())
    assert prepare_main(["--beir", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert f"{qrels}:{line}: corpus-id 'd999' is not in" in capsys.readouterr().err

    qrels.write_text("query-id\tcorpus-id\tscore\nq99\td001\t1\n")
    assert prepare_main(["--beir", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert f"{qrels}:2: query-id 'q99' is not in" in capsys.readouterr().err

    qrels.write_text("query-id\tcorpus-id\tscore\n")
    assert prepare_main(["--beir", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert f"{qrels}: no judgments in this split" in capsys.readouterr().err

    (tmp_path / "bad.run").write_text("q01 Q0 d001 1 2.0 t\nq01 Q0 nope 2 1.0 t\n")
    assert prepare_main(["--beir", str(BUNDLED), "--out", str(tmp_path / "o"), "--negatives", "run",
                         "--run", str(tmp_path / "bad.run")]) == 2
    assert f"{tmp_path / 'bad.run'}:2: document 'nope' is not in the corpus" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_hf_source_dedupes_and_is_read_back(tmp_path, capsys):
    rows = [
        {"query": "what is a dog", "positive": "a dog is an animal", "negative_1": "cats purr", "negative_2": "x y"},
        {"query": "what is a dog", "positive": "a dog is an animal", "negative_1": "cats purr", "negative_2": "x y"},
        {"query": "how do planes fly", "positive": "wings make lift", "negative_1": "wings make lift",
         "negative_2": "trains run on rails"},
        {"query": "why is the sky blue", "positive": "scattering of light", "negative_1": "blue whales",
         "negative_2": "paint"},
    ]
    write_jsonl(tmp_path / "hn.jsonl", rows)
    out = tmp_path / "out"
    assert prepare_main(["--hf", str(tmp_path / "hn.jsonl"), "--out", str(out), "--pair-negatives", "1"]) == 0
    printed = capsys.readouterr().out
    assert "duplicate_groups 1" in printed and "groups_with_positive_text_as_negative 1" in printed
    groups = load_examples("jsonl", 2, path=out / "stage2" / "train_groups.jsonl")
    pairs = load_examples("jsonl", 1, path=out / "stage1" / "train_pairs.jsonl")
    assert [g.query for g in groups] == ["what is a dog", "why is the sky blue"]
    assert groups[1].documents == ("scattering of light", "blue whales", "paint")
    # pairs: the positive and its first negative per group (the duplicate row's pairs removed too)
    assert [(p.query, p.document, p.label) for p in pairs] == [
        ("what is a dog", "a dog is an animal", 1), ("what is a dog", "cats purr", 0),
        ("how do planes fly", "wings make lift", 1),
        ("why is the sky blue", "scattering of light", 1), ("why is the sky blue", "blue whales", 0)]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["stage2"]["groups"] == 2 and summary["removed"]["duplicate_pairs"] == 3
    # the guard compares texts with any BEIR split
    assert prepare_main(["--hf", str(tmp_path / "hn.jsonl"), "--out", str(tmp_path / "o2"),
                         "--exclude-queries-of", f"{BUNDLED}:train"]) == 2
    assert "'why is the sky blue'" in capsys.readouterr().err
