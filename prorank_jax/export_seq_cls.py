"""`prorank export-hf --format seq-cls`: the reranker as a one-label sequence classifier.

The ProRank score is h_last · (W["1"] - W["0"]), with W the LM head (the embedding when the
head is tied). A `Qwen2ForSequenceClassification` / `Qwen3ForSequenceClassification` whose
one-row `score.weight` is that difference computes exactly this score at the last non-pad
token, so servers that host sequence classifiers (vLLM's score/rerank API, Infinity, TEI
where it supports the architecture, transformers pipelines) serve it without overrides:

    config.json         architectures [Qwen{2,3}ForSequenceClassification], num_labels 1
                        (id2label {0: "LABEL_0"}), pad_token_id set, no tied head
    model.safetensors   the decoder's weights + score.weight [1, hidden]; no lm_head
    chat_template.jinja the rerank template (query / document / system messages render
                        mxbai-v2's prompt, prorank_jax.export.RERANK_CHAT_TEMPLATE)
    tokenizer files, README.md (model card with the vllm serve / Infinity command lines)

Before the folder appears it is read back (its safetensors, its tokenizer) and scored with
our own forward pass against the checkpoint, as the causal-LM export is.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from prorank_jax import hf
from prorank_jax.config import ModelConfig
from prorank_jax.status import STATUS

SEQ_CLS_ARCHITECTURES = {"qwen2": "Qwen2ForSequenceClassification", "qwen3": "Qwen3ForSequenceClassification"}
SCORE_WEIGHT = "score.weight"


def seq_cls_tensors(params, config: ModelConfig, yes_id: int, no_id: int, dtype: str) -> dict[str, np.ndarray]:
    """The classifier's state dict: the decoder's tensors and score.weight = W[yes] - W[no] (one row),
    formed in float32 and then cast to dtype."""
    from prorank_jax.model import dtype_of

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


# ----------------------------------------------------------------------------- model card
def serving_section(model_id: str, model_type: str, seq_cls: bool) -> list[str]:
    """Markdown lines: the vllm serve and Infinity command lines for either export."""
    from prorank_jax.prompts import CHAT_PREFIX, CHAT_SUFFIX, SEP, TASK_PROMPT

    arch = SEQ_CLS_ARCHITECTURES.get(model_type, "Qwen2ForSequenceClassification")
    lines = ["### Serving with vLLM and Infinity", ""]
    if seq_cls:
        lines += ["This folder is a one-label sequence classifier (`score.weight` = `W[\"1\"] - W[\"0\"]`), served "
                  "as is:", "", "```bash",
                  f"vllm serve {model_id} --runner pooling --chat-template {model_id}/chat_template.jinja",
                  f"infinity_emb v2 --model-id {model_id}", "```", ""]
    else:
        overrides = json.dumps({"architectures": [arch], "classifier_from_token": ["0", "1"],
                                "method": "from_2_way_softmax"})
        lines += ["vLLM turns this causal LM into a classifier from the `0` / `1` rows of its head; "
                  "`prorank export-hf --format seq-cls` writes that classifier as its own folder "
                  "(which Infinity can also load).", "", "```bash",
                  f"vllm serve {model_id} --runner pooling --hf-overrides '{overrides}' \\",
                  "    --chat-template chat_template.jinja   # prorank_jax.export.RERANK_CHAT_TEMPLATE",
                  f"prorank export-hf --checkpoint {model_id} --format seq-cls --out {model_id}-seq-cls",
                  f"infinity_emb v2 --model-id {model_id}-seq-cls   # Infinity needs the classifier folder",
                  "```", ""]
    lines += ["vLLM renders each (query, document) pair with the chat template (roles `query` and `document`) into "
              "mxbai-rerank-v2's prompt and answers `/rerank`, `/v1/rerank` and `/score` with "
              "`sigmoid(logit(\"1\") - logit(\"0\"))`, the sigmoid of the raw score (mxbai's `normalize=True` "
              "shifts it by `estimated_max / 2` first).",
              "",
              "Infinity (`/rerank`) tokenizes the query and the document as a text pair without a chat template, so "
              "send them already wrapped in the prompt: query = "
              f"`{(CHAT_PREFIX + 'query: {query}')!r}`, document = "
              f"`{(SEP + 'document: {document}' + SEP + TASK_PROMPT + CHAT_SUFFIX)!r}`. The two strings are "
              "tokenized separately, as mxbai tokenizes its pieces, but a few ids at the piece boundaries can "
              "differ, so scores agree closely rather than exactly.",
              "",
              "These command lines follow vLLM's and Infinity's documentation; they were not run here "
              "(neither is installed in this project's environment). `prorank serve` serves the same "
              "Cohere / TEI APIs on JAX.", ""]
    return lines


def seq_cls_card(model_id: str, config: ModelConfig, dtype: str, source: str) -> str:
    from prorank_jax.export import rerank_prompt_text

    import yaml

    front = {"pipeline_tag": "text-ranking", "library_name": "transformers", "tags": ["reranker", "prorank",
             "text-classification", config.model_type]}
    q, d = "what is the capital of France?", "Paris is the capital of France."
    return "\n".join([
        "---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
        f"# {Path(model_id).name or model_id} (sequence classifier)", "",
        f"A ProRank reranker exported by prorank-jax from `{source}` as a one-label "
        f"`{SEQ_CLS_ARCHITECTURES[config.model_type]}` ({dtype} weights). Its logit is the raw ProRank score "
        "`logit(\"1\") - logit(\"0\")` of the mxbai-rerank-v2 prompt, read at the last token.", "",
        "## transformers", "", "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
        f'tokenizer = AutoTokenizer.from_pretrained("{model_id}")',
        f'model = AutoModelForSequenceClassification.from_pretrained("{model_id}").eval()',
        f'messages = [{{"role": "query", "content": "{q}"}}, {{"role": "document", "content": "{d}"}}]',
        "text = tokenizer.apply_chat_template(messages, tokenize=False)",
        "ids = tokenizer(text, add_special_tokens=False, return_tensors='pt')",
        "print(model(**ids).logits[0, 0].item())", "```", "",
        "The template renders " + repr(rerank_prompt_text(q, d)[:60] + "...") + "; it is tokenized as one "
        "string, whereas mxbai-rerank tokenizes the prompt's pieces separately, so a query or document ending in "
        "punctuation or whitespace can get slightly different ids at those boundaries.", "",
        *serving_section(model_id, config.model_type, seq_cls=True),
    ])


# ----------------------------------------------------------------------------- self-check
def reload_scores(folder: Path, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Scores of the written classifier with our forward pass: its score row stands in for the
    two LM-head rows (yes = score.weight, no = 0), so rerank_scores computes h · score.weight."""
    from prorank_jax.export import score_pairs
    from prorank_jax.pretrained import load_tokenizer
    from prorank_jax.prompts import RerankPrompt

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


def export_seq_cls(checkpoint, out_dir, *, step: int | None = None, tokenizer=None, dtype: str = "float32",
                   overwrite: bool = False, pairs: Sequence[tuple[str, str]] | None = None,
                   prompt_family: str | None = None):
    """Write the seq-cls folder of a run folder or HF folder (see the module docstring)."""
    from prorank_jax import export as ex
    from prorank_jax.pretrained import load_tokenizer
    from prorank_jax.prompts import MXBAI_V2, RerankPrompt, detect_prompt_family

    if dtype not in ex.EXPORT_DTYPES:
        raise ex.ExportError(f"--dtype {dtype!r}: expected one of {ex.EXPORT_DTYPES}")
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    family = detect_prompt_family(checkpoint, prompt_family)
    if family != MXBAI_V2:
        # The classifier's chat template and score row are mxbai-v2's; vLLM serves a
        # qwen3-reranker causal LM directly with the overrides its model card gives.
        raise ex.ExportError(f"{checkpoint}: --format seq-cls is for the mxbai-v2 prompt family, this model is "
                             f"{family!r}; export it with --format causal-lm (its card gives vLLM's overrides)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ex.ExportError(f"{out_dir}: --out exists and is not empty; pass --overwrite to replace it")
    config, params, tokenizer_dir, _, step = ex._resolve_source(checkpoint, step)
    tokenizer_dir = Path(tokenizer) if tokenizer is not None else tokenizer_dir
    if tokenizer_dir is None:
        raise ex.ExportError(f"{checkpoint}: has no tokenizer files; pass --tokenizer DIR")
    if config.model_type not in SEQ_CLS_ARCHITECTURES:
        raise ex.ExportError(f"{checkpoint}: model_type {config.model_type!r} has no sequence-classification export")
    tok = load_tokenizer(tokenizer_dir, config)
    try:
        prompt = RerankPrompt(tok, None, config.max_position_embeddings)
    except ValueError as err:
        raise ex.ExportError(f"{tokenizer_dir}: tokenizer unfit for the reranking prompt: {err}") from None

    pairs = list(pairs or ex.check_pairs())
    expected = ex.score_pairs(config, ex._round_to(params, dtype), tok, pairs)
    source = str(checkpoint) + (f" (step {step})" if step is not None else "")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.seqcls-", dir=out_dir.parent))
    try:
        hf_config = seq_cls_config(config, pad_token_id_for(config, tok), dtype)
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        hf.write_safetensors(staging / "model.safetensors",
                             seq_cls_tensors(params, config, prompt.yes_id, prompt.no_id, dtype))
        if not hf.copy_tokenizer_files(tokenizer_dir, staging):
            raise ex.ExportError(f"{tokenizer_dir}: no tokenizer files to copy")
        (staging / "chat_template.jinja").write_text(ex.RERANK_CHAT_TEMPLATE)
        (staging / "README.md").write_text(seq_cls_card(out_dir.name, config, dtype, source))
        got = reload_scores(staging, pairs)
        diff = float(np.max(np.abs(got - expected))) if pairs else 0.0
        if not np.all(np.isfinite(got)) or not diff <= ex.CHECK_ATOL:
            raise ex.ExportCheckError(f"{out_dir}: the classifier's scores differ from the checkpoint's by up to "
                                      f"{diff:.3g} (tolerance {ex.CHECK_ATOL:g}) on {len(pairs)} pairs")
        hf._replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    STATUS.info("exported %s to %s as %s (%s); self-check: %d pairs, max |reloaded - checkpoint| = %.2e (<= %g)",
                source, out_dir, hf_config["architectures"][0], dtype, len(pairs), diff, ex.CHECK_ATOL)
    return out_dir
