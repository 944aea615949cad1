"""The sentence-transformers CrossEncoder files of an exported folder, and the reranking chat templates.

What ``CrossEncoder.save_pretrained`` writes for a causal-LM reranker (sentence-transformers 6.x):

    modules.json                       Transformer (root) -> LogitScore (1_LogitScore/)
    sentence_bert_config.json          transformer_task "text-generation", a "message"
                                       modality (pairs become query/document chat messages)
                                       and, in processing_kwargs.chat_template, the prompt
                                       family's reranking chat template
    1_LogitScore/config.json           true_token_id = id of "1", false_token_id = id of "0"
    config_sentence_transformers.json  model_type CrossEncoder, activation_fn Identity
                                       (predict returns the raw logit difference, as
                                       mxbai's predict does without normalize)

RERANK_CHAT_TEMPLATE renders mxbai-v2's prompt string exactly (prompts.py's pieces
joined); a "system" message (CrossEncoder's ``prompt=``) becomes mxbai's instruction.
chat_template.jinja holding the same template is written only when the tokenizer has
no chat template of its own (a real Qwen tokenizer keeps its ChatML template).

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
"""

from __future__ import annotations

import json
from pathlib import Path

from prorank_jax.export.errors import ExportError
from prorank_jax.prompts import (
    CHAT_PREFIX,
    CHAT_SUFFIX,
    DOCUMENT_TEMPLATE,
    INSTRUCTION_TEMPLATE,
    MXBAI_V2,
    QUERY_TEMPLATE,
    QWEN3_DEFAULT_INSTRUCTION,
    QWEN3_PREFIX,
    QWEN3_RERANKER,
    QWEN3_SUFFIX,
    SEP,
    TASK_PROMPT,
)
from prorank_jax.prompts import prompt_family as _prompt_family

LOGIT_SCORE_DIR = "1_LogitScore"
ST_IDENTITY = "torch.nn.modules.linear.Identity"


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

