"""Both training stages on a tiny random Llama (llama3 RoPE, untied head, the bundled
tokenizer): stage 1 from its HF folder, stage 2 from the stage-1 run folder, and the final
HF folder scores as transformers' LlamaForCausalLM does. The Llama-specific maths is
checked against transformers in test_model_parity / test_hf; this is the plumbing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from launch import config as cfglib
from prorank_jax.data import bundled_tokenizer_dir
from prorank_jax.pretrained import load_tokenizer
from tests.helpers.hf_models import LLAMA3_ROPE, make_hf_model

QUICK = ["loop.steps=2", "loop.log_every=1", "loop.eval_every=0", "loop.save_every=2", "loop.progress_bar=false",
         "loop.async_checkpointing=false", "data.batch_size=2", "eval_data=null"]


@pytest.mark.slow  # two short training runs (about 2 minutes on 2 idle cores)
def test_both_stages_and_the_reranker_on_a_llama(tmp_path):
    from launch.train_grpo import run_grpo
    from launch.train_score import run_score
    from scoring.reranker import Reranker

    vocab = len(load_tokenizer(bundled_tokenizer_dir()))
    start = tmp_path / "llama"
    make_hf_model(start, "llama", seed=5, vocab_size=vocab, hidden_size=32, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
                  rope_scaling=dict(LLAMA3_ROPE, rope_theta=10000.0), initializer_range=0.2)
    stage1, stage2 = tmp_path / "grpo", tmp_path / "score"
    run_grpo(cfglib.load_config("grpo_tiny", [f"out_dir={stage1}", f"model.path={start}", "grpo.group_size=2",
                                              *QUICK]))
    assert json.loads((stage1 / "model_config.json").read_text())["model_type"] == "llama"
    summary = run_score(cfglib.load_config("score_tiny", [f"out_dir={stage2}", f"model.path={stage1}", *QUICK]))
    rows = [json.loads(x) for x in (stage2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows if "loss" in r)

    folder = summary["hf_folder"]
    reranker = Reranker.from_pretrained(folder, dtype="float32", show_progress=False)
    query = "what is the capital of France?"
    documents = ["Paris is the capital and most populous city of France.", "The mitochondria is the powerhouse."]
    ours = reranker.predict([query] * 2, documents)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    theirs = []
    for document in documents:
        ids = reranker.prompt.encode(query, document).input_ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        theirs.append(float(logits[reranker.prompt.yes_id] - logits[reranker.prompt.no_id]))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
