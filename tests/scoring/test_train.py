"""Stage 2: the loss on a real batch equals an explicit recomputation from full logits; the
sharded step equals one device; `prorank train-score` runs end to end on the tiny config."""

import dataclasses
import json
import math

import jax
import jax.extend
import numpy as np
import pytest

from prorank_jax import model
from prorank_jax.config import ModelConfig
from prorank_jax.data import bundled_data_dir, bundled_tokenizer_dir
from prorank_jax.data.examples import GroupExample
from prorank_jax.data.pipeline import DataConfig, load_config_examples, make_stage2_iterator
from prorank_jax.prompts import RerankPrompt
from scoring.losses import ScoreLossConfig
from prorank_jax.pretrained import load_tokenizer
from scoring.reranker import Reranker
from scoring.train import ranking_metrics, rerank_validation, score_loss, validation_set
from tests.helpers.run_watch import (assert_mfu_of_the_run, assert_same_scalars, metrics_scalars, profile_traces,
                                     tensorboard_scalars)


# ----------------------------------------------------------------------------- a real batch
@pytest.fixture(scope="module")
def tiny():
    config = ModelConfig.from_hf(json.loads((bundled_data_dir() / "tiny_model.json").read_text()))
    params = model.init_params(config, jax.random.key(3), init_std=0.2)
    tokenizer = load_tokenizer(bundled_tokenizer_dir(), config)
    return config, params, tokenizer


@pytest.fixture(scope="module")
def real_batch(tiny):
    """Bundled test-split groups: one with all 3 negatives, one with a single negative (two
    masked slots), one with no negative at all, and a padding row filling the batch."""
    config, _, tokenizer = tiny
    data = DataConfig(source="bundled", split="test", batch_size=4, num_negatives=3, max_length=96, shuffle=False)
    groups = load_config_examples(data, stage=2)
    # A group whose negatives include a lower-graded judged document (graded preferences).
    full = next(g for g in groups if len(set(g.labels)) >= 3)
    short = dataclasses.replace(groups[1], doc_ids=groups[1].doc_ids[:2], documents=groups[1].documents[:2],
                                labels=groups[1].labels[:2])
    alone = dataclasses.replace(groups[2], doc_ids=groups[2].doc_ids[:1], documents=groups[2].documents[:1],
                                labels=groups[2].labels[:1])
    prompt = RerankPrompt(tokenizer, data.max_length, config.max_position_embeddings)
    batch = next(iter(make_stage2_iterator([full, short, alone], prompt, data, training=False)))
    np.testing.assert_array_equal(batch["doc_mask"], [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batch["example_mask"], [1, 1, 1, 0])
    return batch, prompt


def reference_scores(params, config, batch, yes_id, no_id):
    """score = logits[:, -1, "1"] - logits[:, -1, "0"] from the full [N, L, V] logits."""
    b, n, length = batch["input_ids"].shape
    logits = np.asarray(model.full_logits(params, config, batch["input_ids"].reshape(b * n, length),
                                          batch["attention_mask"].reshape(b * n, length)), np.float64)
    return (logits[:, -1, yes_id] - logits[:, -1, no_id]).reshape(b, n)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def reference_loss(s, labels, present, cfg: ScoreLossConfig):
    """The three stage-2 losses written out slot by slot (float64)."""
    b, n = s.shape
    bce, listwise, pairwise = [], [], []
    for i in range(b):
        slots = [j for j in range(n) if present[i, j]]
        for j in slots:
            t = labels[i, j] > 0 if cfg.label_mode == "binary" else min(max(labels[i, j] / cfg.max_grade, 0.0), 1.0)
            bce.append(-(t * log_sigmoid(s[i, j]) + (1 - t) * log_sigmoid(-s[i, j])))
        if 0 in slots and len(slots) > 1:
            z = [s[i, j] / cfg.listwise_temperature for j in slots]
            top = max(z)
            listwise.append(top + math.log(sum(math.exp(v - top) for v in z)) - s[i, 0] / cfg.listwise_temperature)
        for a in slots:
            for c in slots:
                if labels[i, a] > labels[i, c]:
                    pairwise.append(math.log1p(math.exp(-(s[i, a] - s[i, c]))))
    terms = {"pointwise": (cfg.pointwise_weight, bce), "listwise": (cfg.listwise_weight, listwise),
             "pairwise": (cfg.pairwise_weight, pairwise)}
    loss = sum(w * (sum(v) / max(len(v), 1)) for w, v in terms.values() if w)
    means = {f"{k}_loss": sum(v) / max(len(v), 1) for k, (w, v) in terms.items() if w}
    counts = {f"{k}_count": len(v) for k, (w, v) in terms.items() if w}
    return loss, {**means, **counts}


def reference_ranking(s, present):
    margins, rows, correct = [], 0, 0
    for i in range(s.shape[0]):
        negatives = [j for j in range(1, s.shape[1]) if present[i, j]] if present[i, 0] else []
        margins += [s[i, 0] - s[i, j] for j in negatives]
        if negatives:
            rows += 1
            correct += all(s[i, 0] > s[i, j] for j in negatives)
    return sum(margins) / len(margins), correct / rows


@pytest.mark.parametrize("cfg", [
    ScoreLossConfig(pointwise_weight=0.3, listwise_weight=1.0, pairwise_weight=0.7, listwise_temperature=0.5,
                    label_mode="graded", max_grade=3),
    ScoreLossConfig(pointwise_weight=1.0, listwise_weight=0.0, label_mode="binary"),
    ScoreLossConfig(),
], ids=["mix-graded", "pointwise-binary", "default-listwise"])
def test_loss_on_a_real_batch_equals_explicit_recomputation_from_full_logits(tiny, real_batch, cfg):
    config, params, _ = tiny
    batch, prompt = real_batch
    s = reference_scores(params, config, batch, prompt.yes_id, prompt.no_id)
    present = batch["doc_mask"] * batch["example_mask"][:, None]
    expected, expected_terms = reference_loss(s, batch["labels"], present, cfg)
    loss, metrics = jax.jit(lambda p, b: score_loss(p, b, config=config, loss_config=cfg, yes_id=prompt.yes_id,
                                                    no_id=prompt.no_id))(params, batch)
    assert abs(float(loss) - expected) <= 2e-5 * max(1.0, abs(expected))
    assert abs(float(metrics["loss"]) - expected) <= 2e-5 * max(1.0, abs(expected))
    for key, value in expected_terms.items():
        assert abs(float(metrics[key]) - value) <= 2e-5 * max(1.0, abs(value)), key
    margin, accuracy = reference_ranking(s, present)
    assert abs(float(metrics["margin"]) - margin) <= 1e-5
    assert float(metrics["accuracy"]) == accuracy
    # the counts show that masked slots and the padding row were left out
    if cfg.listwise_weight:
        assert float(metrics["listwise_count"]) == 2  # the row without negatives and the padding row do not count
    if cfg.pointwise_weight:
        assert float(metrics["pointwise_count"]) == 4 + 2 + 1


def test_masked_slots_and_padding_rows_get_no_gradient_through_their_content(tiny, real_batch):
    """Changing the tokens of a masked slot or of a padding row changes neither loss nor gradient."""
    config, params, _ = tiny
    batch, prompt = real_batch
    cfg = ScoreLossConfig(pointwise_weight=0.5, listwise_weight=1.0, pairwise_weight=0.5, label_mode="graded")
    grad = jax.jit(jax.grad(lambda p, b: score_loss(p, b, config=config, loss_config=cfg, yes_id=prompt.yes_id,
                                                    no_id=prompt.no_id)[0]))
    changed = dict(batch)
    ids, mask = batch["input_ids"].copy(), batch["attention_mask"].copy()
    rng = np.random.RandomState(0)
    for row, slot in [(1, 2), (1, 3), (3, 0), (3, 2)]:
        ids[row, slot] = rng.randint(0, config.vocab_size, ids.shape[-1])
        mask[row, slot, -20:] = 1  # even with real-looking tokens, doc_mask / example_mask rule
    changed.update(input_ids=ids, attention_mask=mask)
    for a, b in zip(jax.tree_util.tree_leaves(grad(params, batch)), jax.tree_util.tree_leaves(grad(params, changed))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def _eqn_shapes(jaxpr):
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield tuple(getattr(var.aval, "shape", ()))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _eqn_shapes(sub)


def test_score_loss_never_forms_vocabulary_sized_logits(tiny, real_batch):
    config, params, _ = tiny
    batch, prompt = real_batch
    jaxpr = jax.make_jaxpr(lambda p, b: score_loss(p, b, config=config, loss_config=ScoreLossConfig(),
                                                   yes_id=prompt.yes_id, no_id=prompt.no_id))(params, batch)
    shapes = list(_eqn_shapes(jaxpr.jaxpr))
    assert shapes and not [s for s in shapes if config.vocab_size in s]


def test_ranking_metrics_on_hand_made_scores():
    scores = np.array([[2.0, 1.0, 3.0], [1.0, -1.0, 0.0], [0.0, 5.0, 5.0]], np.float32)
    mask = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], np.float32)  # slot (0, 2) absent; row 2 has no positive
    out = ranking_metrics(scores, mask)
    assert float(out["margin"]) == pytest.approx((1.0 + 2.0 + 1.0) / 3)
    assert float(out["accuracy"]) == 1.0


# ----------------------------------------------------------------------------- validation set
def test_validation_set_merges_groups_per_query_and_keeps_the_highest_label():
    groups = [
        GroupExample("q1", "what?", ("a", "b", "c"), ("A", "B", "C"), (3, 1, 0)),
        GroupExample("q1", "what?", ("b", "c", "d"), ("B", "C", "D"), (1, 0, 0)),
        GroupExample("", "no ids", ("", ""), ("pos text", "neg text"), (1, 0)),
    ]
    vs = validation_set(groups)
    assert vs.candidates["q1"] == ["a", "b", "c", "d"]
    assert vs.qrels["q1"] == {"a": 3, "b": 1, "c": 0, "d": 0}
    (other,) = [q for q in vs.candidates if q != "q1"]
    assert other.startswith("query:") and vs.queries[other] == "no ids"
    assert sorted(vs.documents[d] for d in vs.candidates[other]) == ["neg text", "pos text"]
    assert vs.num_pairs == 6
    with pytest.raises(ValueError, match="no document with a label > 0"):
        validation_set([GroupExample("q", "q", ("x",), ("X",), (0,))])


# ----------------------------------------------------------------------------- sharded step
def test_score_step_on_2x2x2_mesh_equals_single_device():
    from tests.rl.test_train_step import run_sharded

    result = run_sharded("score")
    assert result["devices"] == 8
    assert result["params_moved"] > 1e-3
    assert result["param_diff"] <= 1e-5
    assert max(result["metric_diff"].values()) <= 1e-5
    assert any("tensor" in s for s in result["specs"]) and any("fsdp" in s for s in result["specs"])


# ----------------------------------------------------------------------------- end to end
def test_train_score_cli_on_the_tiny_config(tmp_path):
    from launch.cli import main
    from prorank_jax.training import read_metrics

    out = tmp_path / "score"
    # Validation: 32 groups x 4 documents per call, so all 101 pairs are one compiled shape.
    rc = main(["train-score", "--config", "score_tiny", "model.path=null", f"out_dir={out}", "loop.steps=3",
               "loop.log_every=1", "loop.eval_every=2", "loop.progress_bar=false", "loop.async_checkpointing=false",
               "loop.profile_steps=[2, 2]", "data.batch_size=8", "data.num_negatives=1", "data.max_length=64",
               "eval_data.max_length=64", "eval_data.batch_size=32"])
    assert rc == 0
    rows = read_metrics(out)
    # Watching the run: TensorBoard holds what metrics.jsonl holds, mfu is the tokens' model
    # FLOPs over the peak, and step 2's profile traces the update.
    assert_same_scalars(tensorboard_scalars(out / "tensorboard"), metrics_scalars(rows), float32=True)
    assert_mfu_of_the_run(out, rows)
    (trace,) = profile_traces(out)
    assert b"jit_train_step" in trace.read_bytes()
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["listwise_count"] == 8 for r in train_rows)
    assert {"accuracy", "margin", "grad_norm", "tokens_per_s"} <= set(train_rows[0])
    assert [r["step"] for r in rows if "eval/ndcg@10" in r] == [0, 2]  # the starting model, then every 2 steps
    assert (out / "checkpoints" / "3").is_dir()
    assert (out / "hf" / "config.json").is_file() and list((out / "hf").glob("*.safetensors"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["hf_folder"] == str(out / "hf")
    assert 0.0 < summary["eval"]["ndcg@10"] <= 1.0 and 0.0 < summary["eval"]["rr@10"] <= 1.0
    # In-memory validation equals reranking with the exported HF folder, loaded afresh.
    eval_groups = load_config_examples(DataConfig(source="bundled", split="test", num_negatives=3), stage=2)
    reranker = Reranker.from_pretrained(out / "hf", max_length=64, dtype="float32", batch_size=128,
                                        show_progress=False)
    again = rerank_validation(reranker, validation_set(eval_groups))
    assert again == pytest.approx(summary["eval"], abs=1e-9)
