"""The reranker as a one-label sequence classifier (`prorank export-hf --format seq-cls`).

The ProRank score is h_last · (W["1"] - W["0"]), with W the LM head (the embedding when the
head is tied). A `Qwen2ForSequenceClassification` / `Qwen3ForSequenceClassification` whose
one-row `score.weight` is that difference computes exactly this score at the last non-pad
token, so servers that host sequence classifiers (vLLM's score/rerank API, Infinity, TEI
where it supports the architecture, transformers pipelines) serve it without overrides:

    config.json         architectures [Qwen{2,3}ForSequenceClassification], num_labels 1
                        (id2label {0: "LABEL_0"}), pad_token_id set, no tied head
    model.safetensors   the decoder's weights + score.weight [1, hidden]; no lm_head
    chat_template.jinja the rerank template (query / document / system messages render
                        mxbai-v2's prompt, sentence_transformers.RERANK_CHAT_TEMPLATE)
    tokenizer files, README.md (model_card.seq_cls_card, with the vllm serve / Infinity command lines)

This module holds the format (tensors, config) and how to score a written classifier
with our own forward pass; hf_folder.export_seq_cls writes and checks the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from prorank_jax import hf
from prorank_jax.config import ModelConfig
from prorank_jax.dtypes import dtype_of
from prorank_jax.export.self_check import score_pairs
from prorank_jax.prompts import RerankPrompt

SEQ_CLS_ARCHITECTURES = {"qwen2": "Qwen2ForSequenceClassification", "qwen3": "Qwen3ForSequenceClassification",
                         "llama": "LlamaForSequenceClassification"}
SCORE_WEIGHT = "score.weight"


def seq_cls_tensors(params, config: ModelConfig, yes_id: int, no_id: int, dtype: str) -> dict[str, np.ndarray]:
    """The classifier's state dict: the decoder's tensors and score.weight = W[yes] - W[no] (one row),
    formed in float32 and then cast to dtype."""
    tensors = hf.hf_tensors_from_params(params, config, "float32")
    head = tensors.pop("lm_head.weight", None)
    if head is None:  # tied: the output projection is the embedding
        head = tensors["model.embed_tokens.weight"]
    direction = (head[yes_id].astype(np.float32) - head[no_id].astype(np.float32))[None, :]
    out = np.dtype(dtype_of(dtype))
    tensors = {name: np.ascontiguousarray(t.astype(out)) for name, t in tensors.items()}
    tensors[SCORE_WEIGHT] = np.ascontiguousarray(direction.astype(out))
    return tensors


def seq_cls_config(config: ModelConfig, pad_token_id: int, dtype: str) -> dict:
    hf_config = config.to_hf()
    hf_config.update(
        architectures=[SEQ_CLS_ARCHITECTURES[config.model_type]],
        id2label={"0": "LABEL_0"},
        label2id={"LABEL_0": 0},
        pad_token_id=int(pad_token_id),
        tie_word_embeddings=False,
        dtype=dtype,
    )
    return hf_config


def pad_token_id_for(config: ModelConfig, tokenizer) -> int:
    """The classifier finds each row's last token by pad_token_id, so it must be set."""
    for value in (config.pad_token_id, getattr(tokenizer, "pad_token_id", None), config.eos_token_id):
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    raise ValueError("no pad_token_id: neither the config nor the tokenizer defines pad or eos ids")


def reload_scores(folder: Path, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Scores of the written classifier with our forward pass: its score row stands in for the
    two LM-head rows (yes = score.weight, no = 0), so rerank_scores computes h · score.weight."""
    from prorank_jax.pretrained import load_tokenizer

    raw = json.loads((folder / "config.json").read_text())
    config = ModelConfig.from_hf({**raw, "tie_word_embeddings": False}, dtype="float32", param_dtype="float32")
    tensors = {name: np.asarray(t, np.float32) for name, t in hf.read_safetensors(folder / "model.safetensors").items()}
    tokenizer = load_tokenizer(folder)
    prompt = RerankPrompt(tokenizer, None, config.max_position_embeddings)
    head = np.zeros((config.vocab_size, config.hidden_size), np.float32)
    head[prompt.yes_id] = tensors.pop(SCORE_WEIGHT)[0]
    tensors["lm_head.weight"] = head
    params = hf.params_from_hf_tensors(tensors, config, str(folder))
    return score_pairs(config, params, tokenizer, pairs)
