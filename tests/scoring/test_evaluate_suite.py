"""Several datasets in one table: each row is a single-dataset run, the average row their mean."""

from __future__ import annotations

import json

import pytest

from launch.evaluate import main as evaluate_main
from prorank_jax.data import write_jsonl
from scoring.evaluate import evaluate
from scoring.evaluate_suite import dataset_names, evaluate_suite, label_dirs
from scoring.first_stage import BM25Settings
from scoring.reranker import Reranker
from tests.helpers.hf_models import make_hf_model
from tests.helpers.tokenizer import build_test_tokenizer

TOP_K = 4
DATASETS = {
    "geo": (
        {"g1": "Paris is the capital of France.", "g2": "The Seine flows through Paris.",
         "g3": "Tokyo is the capital of Japan.", "g4": "Mount Fuji is the highest mountain in Japan.",
         "g5": "Rivers flow into the sea.", "g6": "Berlin is the capital of Germany."},
        {"a": "capital of France", "b": "highest mountain in Japan", "c": "rivers of Paris"},
        [("a", "g1", 2), ("a", "g2", 1), ("b", "g4", 2), ("c", "g2", 2), ("c", "g5", 0)],
    ),
    "bio": (
        {"b1": "Cells make energy through respiration.", "b2": "Mitochondria produce ATP in cells.",
         "b3": "Plants make glucose by photosynthesis.", "b4": "Leaves are green because of chlorophyll.",
         "b5": "Energy drinks contain caffeine."},
        {"x": "how do cells make energy", "y": "why are leaves green"},
        [("x", "b1", 2), ("x", "b2", 2), ("x", "b5", 0), ("y", "b4", 2), ("y", "b3", 1)],
    ),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    out = []
    for name, (corpus, queries, qrels) in DATASETS.items():
        folder = root / name
        (folder / "qrels").mkdir(parents=True)
        write_jsonl(folder / "corpus.jsonl", [{"_id": d, "text": t} for d, t in corpus.items()])
        write_jsonl(folder / "queries.jsonl", [{"_id": q, "text": t} for q, t in queries.items()])
        (folder / "qrels" / "test.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in qrels))
        out.append(folder)
    return out


def _model(folder, seed):
    build_test_tokenizer(folder)
    make_hf_model(folder, seed=seed, vocab_size=448, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, initializer_range=0.1)
    return folder


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return [_model(tmp_path_factory.mktemp(f"model{seed}"), seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def rerankers(model_dirs):
    return {f"m{i}": Reranker.from_pretrained(d, batch_size=4, show_progress=False) for i, d in enumerate(model_dirs)}


@pytest.fixture(scope="module")
def singles(folders, rerankers):
    """Single-dataset, single-model runs: what every cell of the table must equal."""
    return {(label, folder.name): evaluate(r, folder, "test", top_k=TOP_K) for label, r in rerankers.items()
            for folder in folders}


def test_rows_are_single_dataset_runs_and_average_is_their_mean(folders, rerankers, singles, tmp_path):
    suite = evaluate_suite(rerankers, folders, "test", top_k=TOP_K, out_dir=tmp_path)
    rows = suite.rows()
    assert list(rows) == ["geo", "bio", "average"]
    for name in ("geo", "bio"):
        m0, m1 = singles[("m0", name)], singles[("m1", name)]
        assert m0.first_stage == "bm25" and m0.first_stage_settings == BM25Settings().as_dict()
        assert m0.metrics["bm25"] == m1.metrics["bm25"]
        assert rows[name] == {
            "bm25 nDCG@10": m0.metrics["bm25"]["nDCG@10"],
            "m0 nDCG@10": m0.metrics["reranked"]["nDCG@10"], "m1 nDCG@10": m1.metrics["reranked"]["nDCG@10"],
            "bm25 RR@10": m0.metrics["bm25"]["RR@10"],
            "m0 RR@10": m0.metrics["reranked"]["RR@10"], "m1 RR@10": m1.metrics["reranked"]["RR@10"],
            f"R@{TOP_K}": m0.metrics["bm25"][f"R@{TOP_K}"],
        }
        # two different models really were compared (different random inits score differently)
        assert m0.runs["reranked"] != m1.runs["reranked"]
    for column, value in rows["average"].items():
        assert value == pytest.approx((rows["geo"][column] + rows["bio"][column]) / 2, abs=1e-15)
    written = json.loads((tmp_path / "suite.json").read_text())
    assert written["rows"] == rows and written["first_stage"]["analyzer"] == "stemmed"
    assert written["rerankers"] == ["m0", "m1"]
    markdown = (tmp_path / "suite.md").read_text()
    assert markdown.splitlines()[0] == ("| dataset | queries | bm25 nDCG@10 | m0 nDCG@10 | m1 nDCG@10 | bm25 RR@10 "
                                        "| m0 RR@10 | m1 RR@10 | R@4 |")
    assert "| average | 5 |" in markdown and "BM25 stemmed" in markdown
    for d in suite.datasets:
        report = d.reports["m0"]
        assert d.short_queries == sum(len(docs) < TOP_K for docs in report.runs["reranked"].values())
        assert d.truncated == {"m0": {"queries": 0, "documents": 0}, "m1": {"queries": 0, "documents": 0}}
        assert (tmp_path / d.name / "m1" / "metrics.json").is_file()


def test_cli_several_folders_prints_one_table(folders, model_dirs, rerankers, tmp_path, capsys, monkeypatch):
    # the CLI's own model loading is Reranker.from_pretrained; hand it the already compiled rerankers
    by_path = {str(d): r for d, r in zip(model_dirs, rerankers.values())}
    monkeypatch.setattr(Reranker, "from_pretrained", classmethod(lambda cls, path, **kw: by_path[path]))
    assert evaluate_main(["--model", str(model_dirs[0]), "--model", str(model_dirs[1]), "--data", *map(str, folders),
                          "--top-k", str(TOP_K), "--out", str(tmp_path), "--bm25-analyzer", "unstemmed"]) == 0
    out = capsys.readouterr().out
    assert "first stage: BM25 unstemmed (bm25s lucene, k1=1.5, b=0.75" in out
    assert "[1/2] geo (test)" in out and "[2/2] bio (test)" in out
    assert "| average |" in out and "queries with fewer than 4 candidates" in out
    written = json.loads((tmp_path / "suite.json").read_text())
    assert written["rerankers"] == [str(d) for d in model_dirs] and written["first_stage"]["analyzer"] == "unstemmed"


def test_cli_errors_before_loading_models(folders, tmp_path, capsys):
    assert evaluate_main(["--model", "nowhere", "--data", str(folders[0]), str(tmp_path), "--top-k", "3"]) == 2
    assert f"{tmp_path / 'corpus.jsonl'}: missing corpus file" in capsys.readouterr().err


def test_dataset_names_stay_distinct(tmp_path):
    assert dataset_names([tmp_path / "a" / "scifact", tmp_path / "b" / "scifact"]) == ["a/scifact", "b/scifact"]
    with pytest.raises(ValueError, match="given twice"):
        dataset_names([tmp_path / "x", tmp_path / "x"])


def test_reranker_labels_become_safe_folder_names():
    assert label_dirs(["/abs/model", "runs/score", "runs_score", "m0"]) == {
        "/abs/model": "abs_model", "runs/score": "runs_score", "runs_score": "runs_score_2", "m0": "m0"}
