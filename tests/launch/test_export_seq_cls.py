"""`prorank export-hf --format seq-cls`: transformers' AutoModelForSequenceClassification on the
exported folder, fed the prompt ids mxbai-rerank 0.1.6 builds, gives the Reranker's scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from launch import cli
from prorank_jax.data import bundled_tokenizer_dir
from prorank_jax.export import SCORE_WEIGHT, rerank_prompt_text
from prorank_jax.hf import read_safetensors
from prorank_jax.pretrained import bundled_warm_start_dir
from scoring.reranker import Reranker
from tests.helpers.hf_models import LLAMA3_ROPE, make_hf_model
from tests.helpers.tokenizer import build_test_tokenizer

QUERY = "what is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "The mitochondria is the powerhouse of the cell; it produces ATP through respiration.",
    "",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The quick brown fox jumps over the lazy dog. 0 1 10 100 2024",
]
INSTRUCTION = "find the answer"


def mxbai_inputs(folder, monkeypatch, queries, documents, instruction):
    """MxbaiRerankV2.prepare_inputs on the folder's tokenizer (no causal LM needed to build ids)."""
    from mxbai_rerank import MxbaiRerankV2
    from transformers.tokenization_python import PythonBackend

    tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    if not hasattr(type(tokenizer), "prepare_for_model"):  # transformers 5 dropped it from fast tokenizers
        for name in ("prepare_for_model", "truncate_sequences"):
            monkeypatch.setattr(type(tokenizer), name, getattr(PythonBackend, name), raising=False)
    mx = MxbaiRerankV2.__new__(MxbaiRerankV2)
    torch.nn.Module.__init__(mx)
    mx.tokenizer = tokenizer
    mx.model_max_length = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    mx.max_length = 8192
    mx.prepare_predefined_inputs()
    return mx.prepare_inputs(queries, documents, instruction=instruction)


@pytest.fixture(scope="module")
def untied_qwen3(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3-untied")
    tok = build_test_tokenizer(root / "tok")
    make_hf_model(root / "model", "qwen3", seed=3, vocab_size=448, hidden_size=32, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=512, tie_word_embeddings=False)
    return root / "model", tok


@pytest.fixture(scope="module")
def untied_llama(tmp_path_factory):
    """Llama with every optional piece: biases on attention and MLP, llama3 RoPE scaling."""
    root = tmp_path_factory.mktemp("llama-untied")
    tok = build_test_tokenizer(root / "tok")
    make_hf_model(root / "model", "llama", seed=4, vocab_size=448, hidden_size=32, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
                  attention_bias=True, mlp_bias=True, rope_scaling=dict(LLAMA3_ROPE, rope_theta=10000.0),
                  initializer_range=0.2)  # HF's 0.02 leaves this model's scores within 4e-4 of each other
    return root / "model", tok


@pytest.mark.parametrize("source", ["bundled-tied-qwen2", "untied-qwen3", "untied-llama"])
def test_seq_cls_export_scores_equal_the_reranker(source, untied_qwen3, untied_llama, tmp_path, monkeypatch):
    if source == "bundled-tied-qwen2":
        model_dir, tok_dir, arch = bundled_warm_start_dir(), bundled_tokenizer_dir(), "Qwen2ForSequenceClassification"
    elif source == "untied-qwen3":
        (model_dir, tok_dir), arch = untied_qwen3, "Qwen3ForSequenceClassification"
    else:
        (model_dir, tok_dir), arch = untied_llama, "LlamaForSequenceClassification"
    out = tmp_path / "seq-cls"
    assert cli.main(["export-hf", "--checkpoint", str(model_dir), "--tokenizer", str(tok_dir), "--out", str(out),
                     "--format", "seq-cls"]) == 0

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [arch] and config["pad_token_id"] is not None
    tensors = read_safetensors(out / "model.safetensors")
    assert tensors[SCORE_WEIGHT].shape == (1, config["hidden_size"]) and "lm_head.weight" not in tensors
    # the score row is W["1"] - W["0"] of the source head (the embedding when tied)
    source_tensors = read_safetensors(model_dir / "model.safetensors")
    reference = Reranker.from_pretrained(model_dir, tokenizer=tok_dir, dtype="float32", show_progress=False,
                                         reuse_prefix=False, pack_tokens=False)  # one program per call
    head = source_tensors.get("lm_head.weight", source_tensors["model.embed_tokens.weight"])
    yes, no = reference.prompt.yes_id, reference.prompt.no_id
    np.testing.assert_allclose(tensors[SCORE_WEIGHT][0], head[yes] - head[no], atol=1e-6, rtol=0)

    model = AutoModelForSequenceClassification.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(model).__name__ == arch and model.config.num_labels == 1
    queries = [QUERY] * len(DOCUMENTS)
    for instruction in (None, INSTRUCTION):
        inputs = mxbai_inputs(out, monkeypatch, queries, DOCUMENTS, instruction)
        with torch.no_grad():
            theirs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, 0].numpy()
        ours = reference.predict(queries, DOCUMENTS, instruction=instruction)
        assert np.ptp(ours) > 1e-2  # the scores spread (100x the tolerance), so the comparison means something
        np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)

    # the chat template renders mxbai's prompt from query / document messages
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    messages = [{"role": "query", "content": QUERY}, {"role": "document", "content": DOCUMENTS[0]}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == rerank_prompt_text(QUERY, DOCUMENTS[0])
    card = (out / "README.md").read_text()
    assert "vllm serve" in card and "infinity_emb v2 --model-id" in card and arch in card


def test_causal_lm_card_names_the_vllm_and_infinity_command_lines(tmp_path):
    out = tmp_path / "causal"
    assert cli.main(["export-hf", "--checkpoint", str(bundled_warm_start_dir()), "--tokenizer",
                     str(bundled_tokenizer_dir()), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert '"classifier_from_token": ["0", "1"]' in card and "from_2_way_softmax" in card
    assert "--format seq-cls" in card and "infinity_emb v2 --model-id" in card
