"""Both training stages with prompt_family=qwen3-reranker: the family travels from the config
to the run folder, the stage-1 rewards, stage 2 (started from the stage-1 run, detected there)
and the saved HF folders."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from launch import config as cfglib
from prorank_jax import model
from prorank_jax.config import ModelConfig
from prorank_jax.data import bundled_data_dir
from prorank_jax.pretrained import load_tokenizer
from prorank_jax.prompts import detect_prompt_family, left_pad, make_prompt
from rl.config import GRPOConfig
from rl.rollout import rollout, sampling_config
from tests.helpers.tokenizer import build_qwen3_test_tokenizer

QUICK = ["loop.steps=2", "loop.log_every=1", "loop.eval_every=0", "loop.save_every=2", "loop.progress_bar=false",
         "loop.async_checkpointing=false", "data.batch_size=2", "data.max_length=192"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return build_qwen3_test_tokenizer(tmp_path_factory.mktemp("tok") / "tok")


def test_stage1_format_reward_counts_yes_and_no(tokenizer_dir):
    """A model whose only non-zero logits are +-1000 on "yes" / "no" always answers one of them:
    the qwen3-reranker answers get format reward 1, mxbai's ("0", "1") would give 0, and
    correctness compares with allowed_labels[label]."""
    tokenizer = load_tokenizer(tokenizer_dir)
    config = ModelConfig.from_hf(json.loads((bundled_data_dir() / "tiny_model.json").read_text()))
    assert config.tie_word_embeddings
    prompt = make_prompt("qwen3-reranker", tokenizer, 256, config.max_position_embeddings)
    params = model.init_params(config, jax.random.key(0))
    # the last hidden state is (x_0 / rms(x)) e_0, so logits are 0 except +-1000 * that on yes / no
    norm = np.zeros(config.hidden_size, np.float32)
    norm[0] = 1.0
    embedding = np.array(params["model"]["embed_tokens"]["embedding"])
    embedding[:, 0] = 0.0
    embedding[prompt.yes_id, 0], embedding[prompt.no_id, 0] = 1000.0, -1000.0
    params["model"]["norm"]["weight"] = norm
    params["model"]["embed_tokens"]["embedding"] = embedding

    encoded = prompt.encode_batch(["what is the capital of France?", "北京是哪个国家的首都?"],
                                  ["Paris is the capital of France.", "Berlin ist die Hauptstadt."])
    ids, mask = left_pad([e.input_ids for e in encoded], max(map(len, encoded)), prompt.pad_id)
    batch = {"input_ids": ids, "attention_mask": mask, "label": np.array([1, 0], np.int32)}
    grpo = GRPOConfig(group_size=2, top_k=1, max_completion_tokens=1, beta=0.0, allowed_labels=("no", "yes"))
    _, metrics = rollout(params, params, config, batch, jax.random.key(1), grpo,
                         sampling_config(grpo, tokenizer, config), tokenizer)
    assert metrics["format_rate"] == 1.0
    assert metrics["accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    digits = grpo.replace(allowed_labels=("0", "1"))
    _, metrics = rollout(params, params, config, batch, jax.random.key(1), digits,
                         sampling_config(digits, tokenizer, config), tokenizer)
    assert metrics["format_rate"] == 0.0 and metrics["accuracy"] == 0.0


@pytest.mark.slow  # two short training runs: 242 s on the shared 2-core box at load ~20 (see the report)
def test_both_stages_train_with_the_qwen3_family(tokenizer_dir, tmp_path):
    from launch.train_grpo import run_grpo
    from launch.train_score import run_score
    from scoring.reranker import Reranker

    stage1 = tmp_path / "grpo"
    raw = cfglib.load_config("grpo_tiny", [f"out_dir={stage1}", "prompt_family=qwen3-reranker",
                                           f"model.tokenizer={tokenizer_dir}", "eval_data=null",
                                           "grpo.group_size=2", *QUICK])
    summary = run_grpo(raw)
    run_config = json.loads((stage1 / "run_config.json").read_text())
    assert run_config["prompt_family"] == "qwen3-reranker"
    assert run_config["grpo"]["allowed_labels"] == ["no", "yes"]
    rows = [json.loads(x) for x in (stage1 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "format_rate" in r] == [1, 2]
    assert detect_prompt_family(summary["hf_folder"]) == "qwen3-reranker"  # its prorank.json

    # stage 2 from the stage-1 run folder, no prompt_family given: the run's own is taken
    stage2 = tmp_path / "score"
    raw = cfglib.load_config("score_tiny", [f"out_dir={stage2}", f"model.path={stage1}", "eval_data.batch_size=2",
                                            "eval_data.max_length=192", *QUICK])
    summary = run_score(raw)
    assert json.loads((stage2 / "run_config.json").read_text())["prompt_family"] == "qwen3-reranker"
    assert 0.0 <= summary["eval"]["ndcg@10"] <= 1.0
    reranker = Reranker.from_pretrained(summary["hf_folder"], dtype="float32", show_progress=False)
    assert reranker.family.name == "qwen3-reranker"
    assert reranker.prompt.yes_id == load_tokenizer(tokenizer_dir).convert_tokens_to_ids("yes")


def test_allowed_labels_must_agree_with_the_family(tokenizer_dir, tmp_path):
    from launch.train_grpo import run_grpo

    raw = cfglib.load_config("grpo_tiny", [f"out_dir={tmp_path}", "prompt_family=qwen3-reranker",
                                           "grpo.allowed_labels=['0', '1']", *QUICK])
    with pytest.raises(cfglib.RunConfigError, match=r"grpo.allowed_labels=\['0', '1'\] disagrees"):
        run_grpo(raw)
    raw = cfglib.load_config("grpo_tiny", [f"out_dir={tmp_path}", "prompt_family=bert", *QUICK])
    with pytest.raises(cfglib.RunConfigError, match="prompt_family='bert'"):
        run_grpo(raw)
