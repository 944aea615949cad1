"""Stage-1 validation: greedy accuracy plus the score's own accuracy and AUC, checked
against an independent full-vocabulary forward and scikit-learn's roc_auc_score."""

import jax
import numpy as np
from sklearn.metrics import roc_auc_score

from prorank_jax import model
from prorank_jax.config import ModelConfig
from prorank_jax.data import bundled_data_dir
from prorank_jax.bundled import bundled_tokenizer_dir
from prorank_jax.data.pipeline import DataConfig, load_config_examples, make_stage1_iterator
from prorank_jax.pretrained import load_tokenizer
from prorank_jax.prompts import RerankPrompt
from rl.config import GRPOConfig
from rl.rollout import sampling_config
from rl.train import greedy_accuracy


def test_greedy_accuracy_reports_score_accuracy_and_auc():
    config = ModelConfig.from_hf(bundled_data_dir() / "tiny_model.json")
    params = model.init_params(config, jax.random.key(3), init_std=0.1)
    tokenizer = load_tokenizer(bundled_tokenizer_dir(), config)
    prompt = RerankPrompt(tokenizer, 112, config.max_position_embeddings)
    data = DataConfig(source="bundled", split="test", batch_size=32, num_negatives=3, max_length=112,
                      buckets=(160, 192), shuffle=False)
    batches = list(make_stage1_iterator(load_config_examples(data, stage=1), prompt, data, training=False))
    sampler = sampling_config(GRPOConfig(max_completion_tokens=1), tokenizer, config)

    got = greedy_accuracy(params, config, batches, tokenizer, sampler, label_ids=(prompt.yes_id, prompt.no_id))

    scores, labels = [], []
    for batch in batches:
        logits = np.asarray(model.full_logits(params, config, batch["input_ids"], batch["attention_mask"]))[:, -1]
        keep = batch["example_mask"] == 1
        scores.extend((logits[:, prompt.yes_id] - logits[:, prompt.no_id])[keep])
        labels.extend(batch["label"][keep])
    scores, labels = np.array(scores), np.array(labels)
    assert got["pairs"] == len(labels) > 50 and 0 < labels.mean() < 1
    assert got["score_auc"] == np.float64(roc_auc_score(labels, scores)).item()
    assert got["score_accuracy"] == np.mean((scores > 0) == (labels == 1))
    # A random model rarely answers "0"/"1" greedily, yet its score still gives every pair an answer.
    assert got["format_rate"] < 0.5
    without = greedy_accuracy(params, config, batches, tokenizer, sampler)
    assert "score_auc" not in without and without["accuracy"] == got["accuracy"]
