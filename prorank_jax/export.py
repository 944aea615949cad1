"""Export a checkpoint as one Hugging Face folder that every reranking stack loads.

The folder holds (written together, atomically):

* config.json, generation_config.json, model.safetensors (or shards), tokenizer files:
  a plain Qwen2/Qwen3 checkpoint, as written by ``prorank_jax.hf.save``. transformers'
  AutoModelForCausalLM and mxbai-rerank's ``MxbaiRerankV2`` (which builds its own prompt
  from the tokenizer) load it as they load any Qwen checkpoint.
* sentence-transformers 6.x CrossEncoder files (what ``CrossEncoder.save_pretrained``
  writes for a causal-LM reranker):
    modules.json                     Transformer (root) -> LogitScore (1_LogitScore/)
    sentence_bert_config.json        transformer_task "text-generation", a "message"
                                     modality (pairs become query/document chat messages)
                                     and, in processing_kwargs.chat_template, the
                                     reranking chat template RERANK_CHAT_TEMPLATE
    1_LogitScore/config.json         true_token_id = id of "1", false_token_id = id of "0"
    config_sentence_transformers.json  model_type CrossEncoder, activation_fn Identity
                                     (predict returns the raw logit difference, as
                                     mxbai's predict does without normalize)
  The template renders mxbai-v2's prompt string exactly (prompts.py's pieces joined);
  a "system" message (CrossEncoder's ``prompt=``) becomes mxbai's instruction.
  chat_template.jinja holding the same template is written only when the tokenizer has
  no chat template of its own (a real Qwen tokenizer keeps its ChatML template).
* README.md: a model card (YAML front matter, training summary, evaluation table,
  usage snippets for mxbai-rerank, sentence-transformers, transformers and prorank-jax).

Where sentence-transformers can differ from mxbai (and from us): it tokenizes the
rendered prompt as ONE string, while mxbai tokenizes the pieces separately and joins
the ids. BPE can merge across the two piece boundaries that follow user text, i.e.
the end of the query and the end of the document, each followed by "\\n". Qwen's
pre-tokenizer regex glues trailing newlines to punctuation (`` ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*``)
and to whitespace (``\\s*[\\r\\n]+``), so with the real Qwen vocabulary (which has tokens
such as "?\\n" and ".\\n") a query or document ending in punctuation or whitespace gets
different ids there; one ending in a letter or digit gets identical ids. Truncation also
differs: sentence-transformers cuts the whole prompt to max_seq_length and writes the
template tail back, mxbai cuts the query to 3/4 of max_length and then the document.
Without truncation and with identical ids, scores are equal up to float noise.

Before the folder appears at its destination it is reloaded (hf.load + the tokenizer
files it holds) and scored on a few pairs against the checkpoint's own params; a
mismatch removes it and raises ExportCheckError.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from prorank_jax import hf
from prorank_jax.config import ModelConfig
from prorank_jax.prompts import (
    CHAT_PREFIX,
    CHAT_SUFFIX,
    DOCUMENT_TEMPLATE,
    INSTRUCTION_TEMPLATE,
    MXBAI_V2,
    NO_TEXT,
    PRORANK_FILE,
    QUERY_TEMPLATE,
    QWEN3_DEFAULT_INSTRUCTION,
    QWEN3_PREFIX,
    QWEN3_RERANKER,
    QWEN3_SUFFIX,
    SEP,
    TASK_PROMPT,
    YES_TEXT,
    detect_prompt_family,
    prorank_file_text,
)
from prorank_jax.prompts import prompt_family as _prompt_family

log = logging.getLogger(__name__)

EXPORT_DTYPES = ("float32", "bfloat16")
# Self-check tolerance on scores (max abs diff). The reference is the checkpoint's params
# rounded to the export dtype, so a faithful bfloat16 file meets the same float32-compute
# bound; the drift of bfloat16 scores from the float32 params is reported, not checked.
CHECK_ATOL = 1e-4
DEFAULT_LICENSE = "apache-2.0"
LOGIT_SCORE_DIR = "1_LogitScore"
ST_IDENTITY = "torch.nn.modules.linear.Identity"
CARD_TAGS = ("reranker", "prorank", "jax", "cross-encoder", "text-ranking", "mxbai-rerank")
# A few (query, document) pairs for the self-check when no bundled data is readable.
FALLBACK_PAIRS = (
    ("what is the capital of France?", "Paris is the capital and most populous city of France."),
    ("what is the capital of France?", "The mitochondria is the powerhouse of the cell."),
    ("how do plants make food", "Photosynthesis converts light energy into chemical energy stored in glucose."),
    ("how do plants make food", ""),
)


class ExportError(ValueError):
    """The checkpoint, its run folder or the export options cannot give a valid folder."""


class ExportCheckError(RuntimeError):
    """The written folder does not reproduce the checkpoint's scores (nothing was kept)."""


# ----------------------------------------------------------------------------- chat template
def _jinja_text(text: str) -> str:
    """Literal text inside a Jinja template (our template strings hold no Jinja syntax)."""
    if "{{" in text or "{%" in text or "{#" in text:
        raise ValueError(f"template text {text!r} contains Jinja delimiters")
    return text


def _build_rerank_chat_template() -> str:
    """mxbai-v2's prompt from query/document messages; other conversations render as ChatML.

    Written so that transformers' Jinja settings (trim_blocks, lstrip_blocks) cannot
    touch the literal text: no block tag is followed by a newline or preceded by spaces.
    """
    instruction = _jinja_text(INSTRUCTION_TEMPLATE).replace("{instruction}", "{{ ns.instruction }}")
    query = _jinja_text(QUERY_TEMPLATE).replace("{query}", "{{ ns.query }}")
    document = _jinja_text(DOCUMENT_TEMPLATE).replace("{document}", "{{ ns.document }}")
    return (
        "{%- set ns = namespace(query=none, document=none, instruction=none) -%}"
        "{%- for m in messages -%}"
        "{%- if m['content'] is string -%}{%- set c = m['content'] -%}"
        "{%- else -%}{%- set c = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
        "{%- endif -%}"
        "{%- if m['role'] == 'query' -%}{%- set ns.query = c -%}"
        "{%- elif m['role'] == 'document' -%}{%- set ns.document = c -%}"
        "{%- elif m['role'] == 'system' or m['role'] == 'instruction' -%}{%- set ns.instruction = c -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if ns.query is not none and ns.document is not none -%}"
        + _jinja_text(CHAT_PREFIX)
        + "{% if ns.instruction %}" + instruction + _jinja_text(SEP) + "{% endif %}"
        + query + _jinja_text(SEP) + document + _jinja_text(SEP)
        + _jinja_text(TASK_PROMPT) + _jinja_text(CHAT_SUFFIX)
        + "{% else %}"
        "{% for m in messages %}"
        "{% if m['content'] is string %}{% set c = m['content'] %}"
        "{% else %}{% set c = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
        "{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + c + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        "{% endif %}"
    )


RERANK_CHAT_TEMPLATE = _build_rerank_chat_template()


def _build_qwen3_chat_template() -> str:
    """Qwen3-Reranker's prompt from query/document messages (a "system" message is the instruction,
    the model card's default when there is none); other conversations render as ChatML.
    Built like RERANK_CHAT_TEMPLATE, whose message parsing it shares."""
    head, rest = RERANK_CHAT_TEMPLATE.split("{%- if ns.query is not none and ns.document is not none -%}", 1)
    chatml = rest[rest.index("{% else %}"):]
    return (
        head
        + "{%- if ns.query is not none and ns.document is not none -%}"
        + _jinja_text(QWEN3_PREFIX) + "<Instruct>: "
        # an expression, not an if block: trim_blocks would eat the newline after {% endif %}
        + "{{ ns.instruction if ns.instruction is not none else '" + _jinja_text(QWEN3_DEFAULT_INSTRUCTION) + "' }}"
        + "\n<Query>: {{ ns.query }}\n<Document>: {{ ns.document }}" + _jinja_text(QWEN3_SUFFIX)
        + chatml
    )


QWEN3_RERANK_CHAT_TEMPLATE = _build_qwen3_chat_template()
CHAT_TEMPLATES = {MXBAI_V2: RERANK_CHAT_TEMPLATE, QWEN3_RERANKER: QWEN3_RERANK_CHAT_TEMPLATE}


def rerank_prompt_text(query: str, document: str, instruction: str | None = None) -> str:
    """The prompt string mxbai-v2 builds (its pieces joined), which RERANK_CHAT_TEMPLATE renders."""
    q = QUERY_TEMPLATE.format(query=query)
    if instruction:
        q = INSTRUCTION_TEMPLATE.format(instruction=instruction) + SEP + q
    return CHAT_PREFIX + q + SEP + DOCUMENT_TEMPLATE.format(document=document) + SEP + TASK_PROMPT + CHAT_SUFFIX


# ----------------------------------------------------------------------------- sentence-transformers files
def sentence_transformers_files(yes_id: int, no_id: int, *, write_chat_template: bool,
                                family: str = MXBAI_V2) -> dict[str, str]:
    """file name (relative, may include one folder) -> text, as CrossEncoder.save_pretrained lays them out;
    the chat template renders the prompt family's prompt."""
    chat_template = CHAT_TEMPLATES[_prompt_family(family).name]
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": LOGIT_SCORE_DIR,
         "type": "sentence_transformers.cross_encoder.modules.logit_score.LogitScore"},
    ]
    transformer = {
        "transformer_task": "text-generation",
        "modality_config": {
            "text": {"method": "forward", "method_output_name": "logits"},
            "message": {"method": "forward", "method_output_name": "logits", "format": "flat"},
        },
        "module_output_name": "causal_logits",
        # Forwarded to tokenizer.apply_chat_template: renders (query, document) pairs as mxbai's prompt
        # without replacing the tokenizer's own chat template.
        "processing_kwargs": {"chat_template": {"chat_template": chat_template}},
    }
    logit_score = {"true_token_id": int(yes_id), "false_token_id": int(no_id), "module_input_name": "causal_logits"}
    st_config = {
        "model_type": "CrossEncoder",
        "activation_fn": ST_IDENTITY,
        "prompts": {},
        "default_prompt_name": None,
        "__version__": {"exported_by": "prorank-jax"},
    }
    files = {
        "modules.json": json.dumps(modules, indent=2) + "\n",
        "sentence_bert_config.json": json.dumps(transformer, indent=2) + "\n",
        f"{LOGIT_SCORE_DIR}/config.json": json.dumps(logit_score, indent=2) + "\n",
        "config_sentence_transformers.json": json.dumps(st_config, indent=2) + "\n",
    }
    if write_chat_template:
        files["chat_template.jinja"] = chat_template
    return files


def tokenizer_has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text()).get("chat_template"))
        except json.JSONDecodeError as err:
            raise ExportError(f"{config}: not valid JSON ({err})") from None
    return False


# ----------------------------------------------------------------------------- run folder facts
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{path}: not valid JSON ({err})") from None


def read_metrics_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl rows; a truncated last line (a run killed mid-write) is skipped with a warning."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                log.warning("%s:%d: unreadable last line skipped (%s)", path, number, err)
                continue
            raise ExportError(f"{path}:{number}: not valid JSON ({err})") from None
    return rows


def final_metrics(rows: Sequence[Mapping[str, Any]], step: int | None = None) -> tuple[int | None, dict, int | None, dict]:
    """(train step, last training metrics, eval step, last eval metrics) at or before `step`."""
    train: tuple[int | None, dict] = (None, {})
    evals: tuple[int | None, dict] = (None, {})
    for row in rows:
        s = row.get("step")
        if step is not None and isinstance(s, int) and s > step:
            continue
        values = {k: v for k, v in row.items() if k not in ("step", "time") and isinstance(v, (int, float))}
        ev = {k[len("eval/"):]: v for k, v in values.items() if k.startswith("eval/")}
        tr = {k: v for k, v in values.items() if not k.startswith("eval/")}
        if tr:
            train = (s, tr)
        if ev:
            evals = (s, ev)
    return train[0], train[1], evals[0], evals[1]


def stage_of(run_config: Mapping[str, Any]) -> str:
    if "grpo" in run_config:
        return "stage 1: GRPO prompt warmup"
    if any(k in run_config for k in ("score", "scoring", "loss", "losses", "stage2")):
        return "stage 2: score learning"
    return "unknown stage"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HF_CACHE = re.compile(r"models--([^/]+)--([^/]+)")


def base_model_of(run_config: Mapping[str, Any], seen: int = 0) -> str | None:
    """The hub id the run started from, when the run config says (a run folder is followed)."""
    model = run_config.get("model") or {}
    path = model.get("path") if isinstance(model, Mapping) else None
    if not path or seen > 4:
        return None
    from prorank_jax.run_folder import RUN_CONFIG_FILE

    path = str(path)
    cache = _HF_CACHE.search(path)
    if cache:
        return f"{cache.group(1)}/{cache.group(2)}"
    local = Path(path)
    if (local / RUN_CONFIG_FILE).is_file():
        try:
            return base_model_of(json.loads((local / RUN_CONFIG_FILE).read_text()), seen + 1)
        except json.JSONDecodeError:
            return None
    if local.exists():
        config = local / "config.json"
        if config.is_file():
            try:
                name = json.loads(config.read_text()).get("_name_or_path")
            except json.JSONDecodeError:
                name = None
            if isinstance(name, str) and _HUB_ID.match(name) and not Path(name).exists():
                return name
        return None
    return path if _HUB_ID.match(path) else None


# ----------------------------------------------------------------------------- model card
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


def count_params(config: ModelConfig) -> int:
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
        ["parameters", f"{count_params(c):,}"],
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
        from prorank_jax.export_seq_cls import serving_section

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


def parse_front_matter(card: str) -> dict:
    """The YAML front matter of a model card as a dict (for checks and tests)."""
    import yaml

    if not card.startswith("---\n"):
        raise ValueError("model card does not start with '---' front matter")
    end = card.index("\n---", 4)
    return yaml.safe_load(card[4:end])


# ----------------------------------------------------------------------------- self-check
def check_pairs(limit: int = 8) -> list[tuple[str, str]]:
    """A few (query, document) pairs from the bundled data (relevant and not), else built-in ones."""
    try:
        from prorank_jax.data import bundled_data_dir, document_text

        folder = bundled_data_dir()
        queries = [json.loads(x) for x in (folder / "queries.jsonl").read_text().splitlines() if x.strip()]
        docs = [json.loads(x) for x in (folder / "corpus.jsonl").read_text().splitlines() if x.strip()]
        pairs = []
        for i, q in enumerate(queries[: limit // 2]):
            for d in (docs[i % len(docs)], docs[(i * 7 + 3) % len(docs)]):
                pairs.append((q["text"], document_text(d.get("title", ""), d["text"])))
        return pairs[:limit] or list(FALLBACK_PAIRS)
    except (OSError, KeyError, ValueError, ImportError):
        return list(FALLBACK_PAIRS)


def score_pairs(config: ModelConfig, params, tokenizer, pairs: Sequence[tuple[str, str]],
                max_length: int = 512, family: str = MXBAI_V2) -> np.ndarray:
    """Float32 scores of pairs (the family's prompt, float32 compute) with scoring.score.rerank_scores."""
    import jax
    import jax.numpy as jnp

    from prorank_jax.prompts import left_pad, make_prompt
    from prorank_jax.score import rerank_scores

    config = config.replace(dtype="float32", param_dtype="float32")
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
    prompt = make_prompt(family, tokenizer, max_length, config.max_position_embeddings)
    encoded = prompt.encode_batch([q for q, _ in pairs], [d for _, d in pairs])
    ids, mask = left_pad([e.input_ids for e in encoded], max(len(e) for e in encoded),
                         tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    scores = rerank_scores(params, config, jnp.asarray(ids), jnp.asarray(mask), prompt.yes_id, prompt.no_id)
    return np.asarray(scores, np.float32)


def _round_to(params, dtype: str):
    import jax

    from prorank_jax.model import dtype_of

    target = np.dtype(dtype_of(dtype))
    return jax.tree_util.tree_map(lambda x: np.asarray(x).astype(target).astype(np.float32), params)


@dataclasses.dataclass
class CheckResult:
    pairs: int
    max_abs_diff: float
    atol: float
    dtype_drift: float  # max |scores of the exported dtype - scores of the checkpoint's params|

    def line(self) -> str:
        s = (f"self-check: {self.pairs} pairs, max |reloaded - checkpoint| = {self.max_abs_diff:.2e} "
             f"(<= {self.atol:g})")
        if self.dtype_drift:
            s += f"; rounding to the export dtype moves scores by at most {self.dtype_drift:.3g}"
        return s


def self_check(folder: Path, config: ModelConfig, params, tokenizer_dir: Path, dtype: str,
               pairs: Sequence[tuple[str, str]] | None = None, atol: float = CHECK_ATOL,
               family: str = MXBAI_V2) -> CheckResult:
    """Score pairs with the written folder (hf.load + its own tokenizer files) and with the
    checkpoint's params (rounded to `dtype`, with the source tokenizer); raise on mismatch."""
    from prorank_jax.pretrained import load_tokenizer

    pairs = list(pairs or check_pairs())
    source_tok = load_tokenizer(tokenizer_dir, config)
    expected = score_pairs(config, _round_to(params, dtype), source_tok, pairs, family=family)
    drift = 0.0
    if dtype != "float32":
        drift = float(np.max(np.abs(score_pairs(config, params, source_tok, pairs, family=family) - expected)))
    try:
        re_config, re_params = hf.load(folder, param_dtype="float32")
        got = score_pairs(re_config, re_params, load_tokenizer(folder), pairs, family=detect_prompt_family(folder))
    except Exception as err:  # any failure to read the folder back is a failed check
        raise ExportCheckError(f"{folder}: the written folder could not be reloaded and scored: "
                               f"{type(err).__name__}: {err}") from err
    diff = float(np.max(np.abs(got - expected))) if len(pairs) else 0.0
    if not np.all(np.isfinite(got)) or not diff <= atol:
        raise ExportCheckError(
            f"{folder}: scores of the reloaded folder differ from the checkpoint's by up to {diff:.3g} "
            f"(tolerance {atol:g}) on {len(pairs)} pairs; expected {expected.tolist()}, got {got.tolist()}"
        )
    return CheckResult(len(pairs), diff, atol, drift)


# ----------------------------------------------------------------------------- export
@dataclasses.dataclass
class ExportResult:
    out_dir: Path
    step: int | None
    check: CheckResult
    pushed_to: str | None = None


def _hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")


def _resolve_source(checkpoint: Path, step: int | None):
    """(config, params, tokenizer dir or None, run folder or None, step)."""
    from prorank_jax.pretrained import load_pretrained
    from prorank_jax.run_folder import CHECKPOINTS_DIR, HF_FOLDER, RUN_FOLDER, RUN_FOLDER_FILES, folder_kind

    if not checkpoint.is_dir():
        raise ExportError(f"{checkpoint}: --checkpoint folder does not exist")
    kind = folder_kind(checkpoint)
    if kind is None:
        raise ExportError(f"{checkpoint}: neither a prorank run folder ({' + '.join(RUN_FOLDER_FILES)} + "
                          f"{CHECKPOINTS_DIR}/) nor an HF checkpoint folder (config.json + safetensors)")
    if kind == HF_FOLDER and step is not None:
        raise ExportError(f"{checkpoint}: --step applies to prorank run folders; this is an HF folder")
    errors: tuple[type[Exception], ...] = (hf.CheckpointError,)
    if kind == RUN_FOLDER:
        from prorank_jax import checkpoint as ckpt

        errors += (ckpt.CheckpointError,)
        if step is None:
            steps_dir = checkpoint / CHECKPOINTS_DIR
            complete, broken = ckpt.scan_steps(steps_dir)
            if not complete:
                listing = "".join(f"\n  {p}: {why}" for p, why in broken.items())
                raise ExportError(f"{steps_dir}: holds no complete checkpoint{listing}")
            step = complete[-1]
    try:
        config, params, tokenizer_dir = load_pretrained(checkpoint, step=step)
    except errors as err:
        raise ExportError(str(err)) from err
    if kind == RUN_FOLDER:
        return config, params, tokenizer_dir, checkpoint, int(step)
    return config, params, tokenizer_dir, None, None


def export_hf(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    step: int | None = None,
    tokenizer: str | os.PathLike | None = None,
    dtype: str = "float32",
    license: str = DEFAULT_LICENSE,
    base_model: str | None = None,
    push_to_hub: str | None = None,
    overwrite: bool = False,
    pairs: Sequence[tuple[str, str]] | None = None,
    prompt_family: str | None = None,
) -> ExportResult:
    """Write the HF / mxbai / sentence-transformers folder of a checkpoint (see the module docstring).

    checkpoint: a prorank run folder (step: default the latest complete one) or an HF folder.
    tokenizer: tokenizer folder, default the run's tokenizer/ (or the HF folder's own files).
    push_to_hub: a repo id to upload the folder to afterwards (needs HF_TOKEN).
    pairs: (query, document) pairs for the self-check; default a few bundled ones.
    prompt_family: force the family; default the checkpoint's (prompts.detect_prompt_family). It is
    written to the folder's prorank.json, and fixes its sentence-transformers template and card.
    The folder is assembled and self-checked beside out_dir and renamed into place only
    when the check passes; an existing non-empty out_dir needs overwrite=True.
    """
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"--dtype {dtype!r}: expected one of {EXPORT_DTYPES}")
    if push_to_hub is not None and not _hf_token():
        raise ExportError(f"--push-to-hub {push_to_hub}: set HF_TOKEN to a Hugging Face token with write access "
                          "(nothing was written)")
    if push_to_hub is not None and not _HUB_ID.match(push_to_hub):
        raise ExportError(f"--push-to-hub {push_to_hub!r}: expected a repo id like 'user/model-name'")
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ExportError(f"{out_dir}: --out exists and is not empty; pass --overwrite to replace it")
    if out_dir.resolve() == checkpoint.resolve() or checkpoint.resolve() in out_dir.resolve().parents:
        raise ExportError(f"{out_dir}: --out must not be the checkpoint folder or inside it")

    config, params, tokenizer_dir, run_dir, step = _resolve_source(checkpoint, step)
    tokenizer_dir = Path(tokenizer) if tokenizer is not None else tokenizer_dir
    if tokenizer_dir is None:
        raise ExportError(f"{checkpoint}: has no tokenizer files; pass --tokenizer DIR")
    if not any((tokenizer_dir / n).is_file() for n in ("tokenizer.json", "vocab.json")):
        raise ExportError(f"{tokenizer_dir}: --tokenizer folder has no tokenizer.json / vocab.json")

    from prorank_jax.pretrained import load_tokenizer

    try:
        family = detect_prompt_family(checkpoint, prompt_family)
    except ValueError as err:
        raise ExportError(f"{checkpoint}: {err}") from None
    try:
        prompt = _prompt_family(family).prompt(load_tokenizer(tokenizer_dir, config), None,
                                               config.max_position_embeddings)
    except ValueError as err:
        raise ExportError(f"{tokenizer_dir}: tokenizer unfit for the reranking prompt: {err}") from None

    # The training facts for the card: the run folder, or the run an HF folder was saved into
    # (`<run>/hf`, the final export of both stages).
    from prorank_jax.pretrained import is_run_folder

    facts_dir = run_dir or (checkpoint.parent if is_run_folder(checkpoint.parent) else None)
    run_config = _read_json(facts_dir / "run_config.json") if facts_dir else {}
    summary = _read_json(facts_dir / "summary.json") if facts_dir and (facts_dir / "summary.json").is_file() else {}
    train_step, train_metrics, eval_step, eval_metrics = final_metrics(
        read_metrics_rows(facts_dir) if facts_dir else [], step)
    loop = run_config.get("loop") if isinstance(run_config.get("loop"), Mapping) else {}
    facts = CardFacts(
        model_id=push_to_hub or out_dir.name, config=config, dtype=dtype, license=license,
        base_model=base_model or base_model_of(run_config), stage=stage_of(run_config) if facts_dir else "not recorded",
        step=step, total_steps=loop.get("steps"), train_step=train_step, train_metrics=train_metrics,
        eval_step=eval_step, eval_metrics=eval_metrics,
        evaluation=summary.get("eval", summary.get("evaluation")) if isinstance(summary, Mapping) else None,
        source=str(checkpoint) + (f" (step {step})" if step is not None else ""), prompt_family=family,
    )
    st_files = sentence_transformers_files(prompt.yes_id, prompt.no_id,
                                           write_chat_template=not tokenizer_has_chat_template(tokenizer_dir),
                                           family=family)
    flat = {name: text for name, text in st_files.items() if "/" not in name}
    nested = {name: text for name, text in st_files.items() if "/" in name}
    flat["README.md"] = model_card(facts)
    flat[PRORANK_FILE] = prorank_file_text(family)

    # Stage beside out_dir: hf.save assembles the folder atomically at the staging name,
    # the sentence-transformers sub-folder is added, the folder is checked, then renamed.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_root = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=out_dir.parent))
    staged = staging_root / out_dir.name
    try:
        hf.save(params, config, staged, tokenizer_dir=tokenizer_dir, dtype=dtype, extra_files=flat)
        for name, text in nested.items():
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            (staged / name).write_text(text)
        check = self_check(staged, config, params, tokenizer_dir, dtype, pairs, family=family)
        hf._replace_dir(staged, out_dir)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    print(f"[prorank] exported {checkpoint}{f' step {step}' if step is not None else ''} to {out_dir} "
          f"({dtype}); {check.line()}", flush=True)

    pushed = None
    if push_to_hub is not None:
        pushed = push_folder(out_dir, push_to_hub)
    return ExportResult(out_dir, step, check, pushed)


def push_folder(folder: Path, repo_id: str) -> str:
    """Upload the folder to the Hub (creating the repo if needed); returns the repo URL."""
    token = _hf_token()
    if not token:
        raise ExportError(f"push to {repo_id}: HF_TOKEN is not set")
    try:
        from huggingface_hub import HfApi
    except ImportError as err:
        raise ExportError(f"push to {repo_id}: huggingface_hub is not installed ({err})") from None
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                      commit_message="Upload ProRank reranker exported by prorank-jax")
    print(f"[prorank] pushed {folder} to {url}", flush=True)
    return str(url)
