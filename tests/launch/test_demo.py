"""The README's main job, `prorank demo`, run once as a user runs it (both stages with the
bundled configs' full step counts, evaluation, export, curves), and what it must show:

* stage 1 (grpo_tiny_warm.yaml, GRPO from the bundled warm start) makes the model answer
  held-out pairs in format and above the majority-class rate;
* stage 2 (score_tiny_warm.yaml, from the stage-1 checkpoint) raises nDCG@10 on its own
  training queries, and on held-out queries stays above a random ordering of the same
  candidates and within 0.02 of the stage-1 model;
* the demo's table, export and plot.

One module, so the runs (several minutes on 2 cores) happen once per test session and
worker: pytest-xdist's --dist loadfile keeps a file's tests on one worker.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from launch import config as cfglib
from prorank_jax.data.pipeline import DataConfig, load_config_examples
from prorank_jax.training import read_metrics
from scoring.reranker import Reranker
from scoring.train import rerank_validation, validation_set
from tests.helpers.env import TEST_XLA_FLAGS, xla_flags

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`prorank demo` as a user runs it, in its own process with the user's XLA flags: the
    session's -O0 (tests/conftest.py) speeds up compile-bound tests, but the demo is bound
    by execution (side by side on 2 cores: 376 s without the flag; with it, still in stage 2
    at 420 s)."""
    out = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, XLA_FLAGS=" ".join(f for f in xla_flags().split() if f != TEST_XLA_FLAGS))
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "demo", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out / "stdout.txt").write_text(proc.stdout)  # what the user reads (the progress bars go to stderr)
    return out, json.loads((out / "summary.json").read_text())


def markdown_rows(text: str) -> dict[str, list[str]]:
    """The demo table's rows in the README: system -> its four numbers as printed."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].startswith("BM25") and len(cells) == 5:
            rows[cells[0]] = cells[1:]
    return rows


def printed_rows(stdout: str) -> dict[str, list[str]]:
    """The same rows as `prorank demo` printed them (format_metrics_table: name, then numbers)."""
    rows = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"(BM25.*?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", line.strip())
        if match:
            rows[match.group(1)] = list(match.groups()[1:])
    return rows


def test_the_readme_table_is_what_the_demo_prints(demo):
    out, summary = demo
    printed = printed_rows((out / "stdout.txt").read_text())
    assert set(printed) == set(summary["evaluation"])
    assert markdown_rows((ROOT / "README.md").read_text()) == printed


def test_the_demo_says_what_each_stage_does_not_its_whole_config(demo):
    out, _ = demo
    lines = (out / "stdout.txt").read_text().splitlines()
    assert lines[0] == ("== stage 1: GRPO prompt warmup of the bundled tiny model from its warm start, 100 steps "
                        f"(grpo_tiny_warm.yaml) -> {out / 'grpo'}")
    assert (f"== stage 2: score learning from the stage-1 model, 60 steps (score_tiny_warm.yaml) -> "
            f"{out / 'score'}") in lines
    assert not any(line.startswith("resolved config") for line in lines)
    assert lines[-2] == f"curves: {out / 'curves.png'}"


@pytest.fixture(scope="module")
def warm_stage1(demo):
    out = demo[0] / "grpo"
    return out, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def warm_stage2(demo):
    out = demo[0] / "score"
    return out, json.loads((out / "summary.json").read_text())


def test_demo_runs_both_stages_evaluates_exports_and_plots(demo):
    out, summary = demo
    assert set(summary["evaluation"]) == {"BM25 (first stage)", "BM25 + warm start", "BM25 + stage 1 (GRPO)",
                                          "BM25 + stage 2 (score)"}
    for row in summary["evaluation"].values():
        assert 0.0 <= row["nDCG@10"] <= 1.0
    # BM25's own numbers come from the bundled data, not from the models
    assert summary["evaluation"]["BM25 (first stage)"]["nDCG@10"] > 0.5
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "export" / "model.safetensors").exists()
    assert json.loads((out / "summary.json").read_text())["export"] == str(out / "export")
    # The demo's stage summaries are the runs' own.
    assert summary["stage1"] == json.loads((out / "grpo" / "summary.json").read_text())["eval"]


def test_grpo_from_the_warm_start_answers_held_out_pairs_above_the_majority_rate(warm_stage1):
    """grpo_tiny_warm.yaml: the bundled inverse-cloze warm start, fixed seed, 100 steps.

    The rates are greedy answers on the held-out test queries' pairs (eval/*): the
    sampled format rate of training stays low by design, since temperature 2 spreads
    the samples over the whole 1,536-token vocabulary.
    """
    out_dir, summary = warm_stage1
    evals = [r for r in read_metrics(out_dir) if "eval/accuracy" in r]
    first, last = evals[0], summary["eval"]
    assert first["step"] == 0 and [r["step"] for r in evals][-1] == 100
    # The warm start judges the pairs (its score orders them) but seldom answers in format...
    assert first["eval/format_rate"] < 0.3 and first["eval/score_auc"] > 0.6
    assert first["eval/accuracy"] < first["eval/majority_rate"]
    # ...GRPO makes it answer nearly always, and answer better than always giving the majority label.
    assert last["format_rate"] >= 0.9
    assert last["accuracy"] > last["majority_rate"]
    assert last["pairs"] == first["eval/pairs"] and last["score_auc"] > 0.6
    train = [r for r in read_metrics(out_dir) if "format_rate" in r]
    assert all(r["update_skipped"] == 0.0 for r in train) and train[-1]["kl"] > 0.0


def random_ordering_ndcg10(validation, draws: int = 300, seed: int = 0) -> float:
    """Mean trec_eval nDCG@10 of uniformly random orderings of each query's candidates."""
    evaluator = pytrec_eval.RelevanceEvaluator(validation.qrels, {"ndcg_cut.10"})
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(draws):
        run = {q: {d: float(s) for d, s in zip(docs, rng.permutation(len(docs)))}
               for q, docs in validation.candidates.items()}
        means.append(np.mean([m["ndcg_cut_10"] for m in evaluator.evaluate(run).values()]))
    return float(np.mean(means))


def ndcg10_of(run_dir, section: str) -> float:
    """nDCG@10 of a run folder's model over the groups of score_tiny_warm.yaml's `section`."""
    data = dict(cfglib.load_config("score_tiny_warm", [])[section], shuffle=False)
    reranker = Reranker.from_pretrained(run_dir, max_length=data["max_length"], show_progress=False)
    return rerank_validation(reranker, validation_set(load_config_examples(DataConfig(**data), stage=2)))["ndcg@10"]


def test_stage2_learns_its_training_queries_and_keeps_the_held_out_ordering(warm_stage1, warm_stage2):
    """Stage 2 fits a graded order to its 31 training queries; on the 11 held-out queries it
    keeps what the stage-1 model had (it does not add to it at this size: docs/demo.md, "Both
    stages from the warm start")."""
    out_dir, summary = warm_stage2
    evals = [r for r in read_metrics(out_dir) if "eval/ndcg@10" in r]
    # Step 0 validates the model as loaded: the stage-1 checkpoint, before any stage-2 update.
    assert [r["step"] for r in evals] == [0, 20, 40, 60]
    stage1, stage2 = evals[0]["eval/ndcg@10"], summary["eval"]["ndcg@10"]
    eval_data = cfglib.load_config("score_tiny_warm", [])["eval_data"]
    validation = validation_set(load_config_examples(DataConfig(**eval_data), stage=2))
    chance = random_ordering_ndcg10(validation)
    assert len(validation.candidates) == 11 and 0.5 < chance < 0.7
    assert stage1 > chance + 0.1 and stage2 > chance + 0.1
    assert stage2 > stage1 - 0.02, (stage1, stage2)
    # The training queries' own groups: the order stage 2 was taught.
    train1, train2 = ndcg10_of(warm_stage1[0], "data"), ndcg10_of(out_dir, "data")
    assert train2 > train1 + 0.03, (train1, train2)
    assert all(r["update_skipped"] == 0.0 for r in read_metrics(out_dir) if "update_skipped" in r)
