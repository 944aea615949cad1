"""`prorank rank` and `prorank evaluate` through launch.cli.main, on a tiny random Qwen2 folder."""

from __future__ import annotations

import json

import pytest

from launch import cli
from launch.rank import preview, read_documents
from prorank_jax.data import DataError, write_jsonl
from scoring.reranker import Reranker
from tests.helpers.hf_models import make_hf_model
from tests.helpers.tokenizer import build_test_tokenizer

DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "The mitochondria is the powerhouse of the cell.",
    "",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Rerankers score each query and document pair and sort candidates by that score.",
]
QUERY = "what is the capital of France?"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    build_test_tokenizer(folder)
    make_hf_model(folder, vocab_size=448, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, initializer_range=0.1)
    return folder


def parse_table(out: str):
    """(line, score) per printed row, in printed order."""
    rows = out.strip().splitlines()
    assert rows[0].split() == ["rank", "score", "line", "document"]
    parsed = []
    for i, row in enumerate(rows[1:], start=1):
        rank, score, line = row.split()[:3]
        assert int(rank) == i
        parsed.append((int(line), float(score)))
    return parsed


def expected_rows(model_dir, documents, lines, top_k, instruction=None):
    results = Reranker.from_pretrained(model_dir, show_progress=False).rank(
        QUERY, documents, top_k=top_k, instruction=instruction
    )
    return [(lines[r.index], round(r.score, 4)) for r in results]


def test_rank_jsonl(model_dir, tmp_path, capsys):
    path = tmp_path / "docs.jsonl"
    # "document" is accepted as well as "text"; the empty document is ranked, not dropped
    rows = [{"text": d} if i % 2 else {"document": d, "id": i} for i, d in enumerate(DOCUMENTS)]
    write_jsonl(path, rows)
    code = cli.main(["rank", "--model", str(model_dir), "--query", QUERY, "--documents", str(path), "--top-k", "4",
                     "--instruction", "answer the question", "--batch-size", "2"])
    out = capsys.readouterr().out
    assert code == 0
    got = parse_table(out)
    assert got == expected_rows(model_dir, DOCUMENTS, [1, 2, 3, 4, 5], 4, instruction="answer the question")


def test_rank_plain_text_counts_blank_lines(model_dir, tmp_path, capsys):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join([DOCUMENTS[0], DOCUMENTS[1], "   ", DOCUMENTS[3], DOCUMENTS[4]]) + "\n")
    code = cli.main(["rank", "--model", str(model_dir), "--query", QUERY, "--documents", str(path)])
    captured = capsys.readouterr()
    assert code == 0
    assert "skipped 1 blank lines" in captured.err
    docs = [DOCUMENTS[0], DOCUMENTS[1], DOCUMENTS[3], DOCUMENTS[4]]
    assert parse_table(captured.out) == expected_rows(model_dir, docs, [1, 2, 4, 5], 10)


def test_malformed_jsonl_names_file_and_line(model_dir, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "broken"\n')
    code = cli.main(["rank", "--model", str(model_dir), "--query", QUERY, "--documents", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}:2: invalid JSON" in err
    path.write_text('{"text": "fine"}\n\n{"title": "no text"}\n')
    assert cli.main(["rank", "--model", str(model_dir), "--query", QUERY, "--documents", str(path)]) == 2
    assert f"{path}:3: expected a 'text' or 'document' field" in capsys.readouterr().err
    path.write_text('{"text": 5}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'text' must be a string"):
        read_documents(path)


def test_empty_query_and_missing_inputs_are_clear_errors(model_dir, tmp_path, capsys):
    path = tmp_path / "docs.txt"
    path.write_text("a document\n")
    assert cli.main(["rank", "--model", str(model_dir), "--query", "  ", "--documents", str(path)]) == 2
    assert "--query is empty" in capsys.readouterr().err
    assert cli.main(["rank", "--model", str(model_dir), "--query", "q", "--documents", str(tmp_path / "no.txt")]) == 2
    assert "no.txt: documents file not found" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert cli.main(["rank", "--model", str(model_dir), "--query", "q", "--documents", str(empty)]) == 2
    assert "empty.txt: no documents to rank" in capsys.readouterr().err
    assert cli.main(["rank", "--model", str(tmp_path / "nomodel"), "--query", "q", "--documents", str(path)]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert cli.main(["rank", "--model", str(model_dir), "--query", "q", "--documents", str(path), "--top-k", "0"]) == 2
    assert "--top-k must be positive" in capsys.readouterr().err


def test_preview_is_one_line():
    assert preview("a\nb  c") == "a b c"
    assert len(preview("x" * 200)) == 80 and preview("x" * 200).endswith("…")


def test_evaluate_cli(model_dir, tmp_path, capsys):
    data = tmp_path / "beir"
    (data / "qrels").mkdir(parents=True)
    write_jsonl(data / "corpus.jsonl", [{"_id": f"d{i}", "text": d or "empty"} for i, d in enumerate(DOCUMENTS)])
    write_jsonl(data / "queries.jsonl", [{"_id": "q1", "text": QUERY}, {"_id": "q2", "text": "how do plants make energy?"}])
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t2\nq2\td3\t1\n")
    run = tmp_path / "first.run"
    run.write_text("q1 Q0 d1 1 3.0 x\nq1 Q0 d0 2 2.0 x\nq2 Q0 d3 1 1.0 x\nq2 Q0 d4 2 0.5 x\n")
    out = tmp_path / "out"
    code = cli.main(["evaluate", "--model", str(model_dir), "--data", str(data), "--run", str(run), "--top-k", "2",
                     "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "2 queries, 4 pairs reranked" in printed and "first-stage" in printed and "reranked" in printed
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["first-stage"]["R@2"] == metrics["reranked"]["R@2"] == 1.0
    assert f"{metrics['reranked']['nDCG@10']:.4f}" in printed
    assert (out / "reranked.run").is_file() and (out / "per_query.tsv").is_file()

    run.write_text("q1 Q0 d1 1 3.0 x\nq1 Q0 nope 2 2.0 x\n")
    assert cli.main(["evaluate", "--model", str(model_dir), "--data", str(data), "--run", str(run)]) == 2
    assert f"{run}:2: document 'nope' is not in the corpus" in capsys.readouterr().err
