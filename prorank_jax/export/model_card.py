"""The model cards (README.md) of exported folders, built from the run's facts.

One card per export format: ``model_card`` for the causal-LM folder (usage for
mxbai-rerank, sentence-transformers, transformers, vLLM and prorank-jax, per prompt
family) and ``seq_cls_card`` for the sequence classifier; ``serving_section`` is the
vLLM / Infinity part both share. The snippets are tested by running them
(tests/launch/test_export.py), so they are written as the code a user pastes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from prorank_jax import hf
from prorank_jax.config import ModelConfig
from prorank_jax.export.sentence_transformers import rerank_prompt_text
from prorank_jax.export.seq_cls import SEQ_CLS_ARCHITECTURES
from prorank_jax.prompts import (
    CHAT_PREFIX,
    CHAT_SUFFIX,
    MXBAI_V2,
    NO_TEXT,
    QWEN3_DEFAULT_INSTRUCTION,
    QWEN3_PREFIX,
    QWEN3_RERANKER,
    QWEN3_SUFFIX,
    SEP,
    TASK_PROMPT,
    YES_TEXT,
)

DEFAULT_LICENSE = "apache-2.0"
CARD_TAGS = ("reranker", "prorank", "jax", "cross-encoder", "text-ranking", "mxbai-rerank")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def evaluation_table(evaluation: Any) -> str | None:
    """A markdown table of summary.json's evaluation: {metric: value} or {dataset: {metric: value}}."""
    if not isinstance(evaluation, Mapping) or not evaluation:
        return None
    if all(isinstance(v, Mapping) for v in evaluation.values()):
        metrics: list[str] = []
        for v in evaluation.values():
            metrics += [k for k in v if k not in metrics and isinstance(v[k], (int, float))]
        rows = [[name] + [v.get(m, "") for m in metrics] for name, v in evaluation.items()]
        return _table(["dataset"] + metrics, rows)
    rows = [[k, v] for k, v in evaluation.items() if isinstance(v, (int, float))]
    return _table(["metric", "value"], rows) if rows else None


def count_params_of_config(config: ModelConfig) -> int:
    """Parameters of a model of this config, from the HF tensor shapes (no params needed)."""
    return sum(math.prod(shape) for _, _, _, shape in hf.expected_hf_names(config).values())


@dataclasses.dataclass
class CardFacts:
    model_id: str
    config: ModelConfig
    dtype: str
    license: str = DEFAULT_LICENSE
    base_model: str | None = None
    stage: str = "unknown stage"
    step: int | None = None
    total_steps: int | None = None
    train_step: int | None = None
    train_metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    eval_step: int | None = None
    eval_metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    evaluation: Any = None
    source: str = ""
    prompt_family: str = MXBAI_V2


def model_card(facts: CardFacts) -> str:
    """README.md of a causal-LM export: front matter, model and training facts, usage for every loader."""
    import yaml

    front: dict[str, Any] = {"pipeline_tag": "text-ranking", "library_name": "sentence-transformers",
                             "license": facts.license}
    if facts.base_model:
        front["base_model"] = facts.base_model
    front["tags"] = list(CARD_TAGS) + [facts.config.model_type, "transformers"]
    c = facts.config
    mid = facts.model_id
    parts = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# {Path(mid).name or mid}", "",
             "A ProRank reranker trained with prorank-jax (JAX/Flax): a small "
             f"{c.model_type} causal LM whose relevance score for a (query, document) pair is "
             + (f'`logit("yes") - logit("no")` at the last position of the Qwen3-Reranker prompt '
                f'(prompt family `{QWEN3_RERANKER}`).' if facts.prompt_family == QWEN3_RERANKER else
                '`logit("1") - logit("0")` at the last position of the mxbai-rerank-v2 prompt.'), ""]

    parts += ["## Model", "", _table(["field", "value"], [
        ["architecture", f"{c.model_type}, {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
                         f"{c.num_attention_heads} heads / {c.num_key_value_heads} KV heads"],
        ["parameters", f"{count_params_of_config(c):,}"],
        ["weights dtype", facts.dtype],
        ["base model", facts.base_model or "unknown (random init or local folder)"],
    ]), ""]

    parts += ["## Training", ""]
    rows = [["stage", facts.stage]]
    if facts.step is not None:
        rows.append(["exported step", facts.step])
    if facts.total_steps is not None:
        rows.append(["configured steps", facts.total_steps])
    if facts.source:
        rows.append(["exported from", f"`{facts.source}`"])
    parts += [_table(["field", "value"], rows), ""]
    if facts.train_metrics:
        parts += [f"Final training metrics (metrics.jsonl, step {facts.train_step}):", "",
                  _table(["metric", "value"], sorted(facts.train_metrics.items())), ""]
    if facts.eval_metrics:
        parts += [f"Last evaluation during training (step {facts.eval_step}):", "",
                  _table(["metric", "value"], sorted(facts.eval_metrics.items())), ""]
    table = evaluation_table(facts.evaluation)
    if table:
        parts += ["## Evaluation", "", "From the run's summary.json:", "", table, ""]

    q, d = "what is the capital of France?", ["Paris is the capital of France.", "Berlin is in Germany."]
    if facts.prompt_family == QWEN3_RERANKER:
        parts += _qwen3_usage(mid, q, d, c.model_type)
    else:
        parts += _mxbai_usage(mid, q, d)
        parts += serving_section(mid, c.model_type, seq_cls=False)
    return "\n".join(parts)


def _cross_encoder_usage(mid: str, q: str, d: list[str]) -> list[str]:
    """The model card's sentence-transformers snippet, the same for every prompt family."""
    return ["### sentence-transformers", "", "```python",
            "from sentence_transformers import CrossEncoder", "",
            f'model = CrossEncoder("{mid}")',
            f'scores = model.predict([("{q}", doc) for doc in {d!r}])',
            f'ranking = model.rank("{q}", {d!r})',
            "print(scores, ranking)", "```", ""]


def _mxbai_usage(mid: str, q: str, d: list[str]) -> list[str]:
    return ["## Usage", "",
            "Scores are raw logit differences (higher is more relevant); mxbai's `normalize=True` "
            "maps them to (0, 1) with `sigmoid(score - estimated_max / 2)`.", "",
            "### mxbai-rerank", "", "```python",
            "from mxbai_rerank import MxbaiRerankV2", "",
            f'model = MxbaiRerankV2("{mid}")',
            'if not hasattr(model.tokenizer, "prepare_for_model"):  # transformers >= 5',
            "    from transformers.tokenization_python import PythonBackend", "",
            '    for name in ("prepare_for_model", "truncate_sequences"):',
            "        setattr(type(model.tokenizer), name, getattr(PythonBackend, name))",
            f'results = model.rank("{q}", {d!r}, return_documents=True, top_k=2)',
            "print(results)", "```", "",
            "mxbai-rerank 0.1.6 joins the query and document ids with "
            "`tokenizer.prepare_for_model`, which transformers 5 removed from fast tokenizers; the `if` "
            "block lends the tokenizer transformers' own implementation (a no-op on transformers 4).", "",
            *_cross_encoder_usage(mid, q, d),
            "The folder's `sentence_bert_config.json` renders each pair with the mxbai prompt; "
            "`prompt=...` is used as mxbai's instruction. The prompt is tokenized as one string, so a query "
            "or document ending in punctuation or whitespace can get slightly different token ids (and "
            "scores) than mxbai-rerank, which tokenizes the prompt pieces separately.", "",
            "### transformers", "", "```python",
            "import torch",
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'tokenizer = AutoTokenizer.from_pretrained("{mid}")',
            f'model = AutoModelForCausalLM.from_pretrained("{mid}").eval()',
            f"prefix, suffix = {CHAT_PREFIX!r}, {CHAT_SUFFIX!r}",
            f"task = {TASK_PROMPT!r}", "",
            "def score(query, document):",
            '    pieces = [prefix, f"query: {query}", "\\n", f"document: {document}", "\\n", task, suffix]',
            "    ids = [i for p in pieces for i in tokenizer(p, add_special_tokens=False).input_ids]",
            "    with torch.no_grad():",
            "        logits = model(torch.tensor([ids])).logits[0, -1].float()",
            f'    yes, no = (tokenizer(t, add_special_tokens=False).input_ids[0] for t in ("{YES_TEXT}", "{NO_TEXT}"))',
            "    return (logits[yes] - logits[no]).item()", "",
            f'print([score("{q}", doc) for doc in {d!r}])', "```", "",
            "### prorank-jax", "", "```python",
            "from scoring.reranker import Reranker", "",
            f'reranker = Reranker.from_pretrained("{mid}")',
            f'print(reranker.rank("{q}", {d!r}, top_k=2))', "```", "",
            "or from the command line: "
            f'`prorank rank --model {mid} --query "{q}" --documents docs.txt`.', ""]


VLLM_QWEN3_OVERRIDES = {"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"],
                        "is_original_qwen3_reranker": True}


def _qwen3_usage(mid: str, q: str, d: list[str], model_type: str) -> list[str]:
    """Usage for a qwen3-reranker-family model: what loads a Qwen3-Reranker checkpoint loads it."""
    overrides = json.dumps(VLLM_QWEN3_OVERRIDES)
    parts = ["## Usage", "",
             'Raw scores are `logit("yes") - logit("no")` (higher is more relevant); the Qwen3-Reranker '
             'model card\'s score, the probability of "yes", is `sigmoid(score)`. The prompt, instruction '
             "and truncation are Qwen3-Reranker's, so the code written for Qwen/Qwen3-Reranker-0.6B runs "
             "on this folder unchanged.", "",
             *_cross_encoder_usage(mid, q, d),
             "The folder's `sentence_bert_config.json` renders each pair with the Qwen3-Reranker prompt; "
             "`prompt=...` is used as its instruction (default: the model card's web-search one). Scores are "
             "raw logit differences (no activation).", "",
             "### transformers (the Qwen3-Reranker model card's code)", "", "```python",
             "import torch",
             "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'tokenizer = AutoTokenizer.from_pretrained("{mid}", padding_side="left")',
             f'model = AutoModelForCausalLM.from_pretrained("{mid}").eval()',
             f"prefix, suffix = {QWEN3_PREFIX!r}, {QWEN3_SUFFIX!r}",
             "prefix_ids = tokenizer.encode(prefix, add_special_tokens=False)",
             "suffix_ids = tokenizer.encode(suffix, add_special_tokens=False)",
             'yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")',
             "max_length = 8192", "",
             f"def score(query, document, instruction={QWEN3_DEFAULT_INSTRUCTION!r}):",
             '    body = f"<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {document}"',
             "    ids = tokenizer([body], truncation='longest_first', add_special_tokens=False,",
             "                    max_length=max_length - len(prefix_ids) - len(suffix_ids)).input_ids[0]",
             "    with torch.no_grad():",
             "        logits = model(torch.tensor([prefix_ids + ids + suffix_ids])).logits[0, -1].float()",
             "    return (logits[yes] - logits[no]).item()", "",
             f'print([score("{q}", doc) for doc in {d!r}])', "```", ""]
    if model_type == "qwen3":
        parts += ["### vLLM", "",
                  "vLLM serves it as it serves Qwen3-Reranker, as a sequence classifier built from the "
                  '"no" / "yes" rows of the LM head (its score is `sigmoid(score)` above):', "",
                  "```bash",
                  f"vllm serve {mid} --hf_overrides '{overrides}'", "```", "", "```python",
                  "from vllm import LLM", "",
                  f'model = LLM(model="{mid}", runner="pooling", hf_overrides={VLLM_QWEN3_OVERRIDES!r})', "```", "",
                  "Format the query as `prefix + \"<Instruct>: {instruction}\\n<Query>: {query}\\n\"` and each "
                  "document as `\"<Document>: {doc}\" + suffix`, with the prefix and suffix above.", ""]
    parts += ["### prorank-jax", "", "```python",
              "from scoring.reranker import Reranker", "",
              f'reranker = Reranker.from_pretrained("{mid}")  # prompt family from prorank.json',
              f'print(reranker.rank("{q}", {d!r}, top_k=2))', "```", "",
              "or from the command line: "
              f'`prorank rank --model {mid} --query "{q}" --documents docs.txt`.', ""]
    return parts


def serving_section(model_id: str, model_type: str, seq_cls: bool) -> list[str]:
    """Markdown lines: the vllm serve and Infinity command lines for either export."""
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
    """README.md of a sequence-classifier export."""
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
