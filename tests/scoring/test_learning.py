"""Stage 2 learns: from the stage-1 checkpoint of the tiny model (GRPO from the bundled
warm start, tests/conftest.py), score_tiny_warm.yaml raises held-out nDCG@10 above the
stage-1 model's and above a random ordering of the same candidates."""

import numpy as np
import pytrec_eval

from launch import config as cfglib
from prorank_jax.data.pipeline import DataConfig, load_config_examples
from prorank_jax.training import read_metrics
from scoring.train import validation_set


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


def test_stage2_from_the_stage1_checkpoint_beats_it_and_a_random_ordering(warm_stage2):
    out_dir, summary = warm_stage2
    evals = [r for r in read_metrics(out_dir) if "eval/ndcg@10" in r]
    # Step 0 validates the model as loaded: the stage-1 checkpoint, before any stage-2 update.
    assert [r["step"] for r in evals] == [0, 20, 40, 60]
    stage1, stage2 = evals[0]["eval/ndcg@10"], summary["eval"]["ndcg@10"]
    eval_data = cfglib.load_config("score_tiny_warm", [])["eval_data"]
    validation = validation_set(load_config_examples(DataConfig(**eval_data), stage=2))
    chance = random_ordering_ndcg10(validation)
    assert len(validation.candidates) == 11 and 0.5 < chance < 0.7
    assert stage1 > chance
    assert stage2 > stage1 + 0.02, (stage1, stage2)
    assert all(r["update_skipped"] == 0.0 for r in read_metrics(out_dir) if "update_skipped" in r)
