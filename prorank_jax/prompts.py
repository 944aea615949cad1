"""The reranking prompts of the two supported prompt families, token for token as their
reference code builds them.

Shared by stage 1 (GRPO rollouts), stage 2 (score learning) and inference, so that a
model trained here scores exactly the ids its family's reference code would feed it.

Families (`PROMPT_FAMILIES`, looked up with `prompt_family(name)`):

  name             prompt class       answers (no, yes)   normalize=True
  mxbai-v2         RerankPrompt       "0", "1"            sigmoid(score - estimated_max / 2)
  qwen3-reranker   Qwen3RerankPrompt  "no", "yes"         sigmoid(score)

For both the raw score is logit(yes) - logit(no) at the last position. mxbai-v2 is the
default; `detect_prompt_family` says which family a model folder was trained with.

mxbai-v2 (mxbai-rerank 0.1.6, `MxbaiRerankV2`) is described here; Qwen3-Reranker at
Qwen3RerankPrompt.

Layout (each piece tokenized on its own with add_special_tokens=False, ids concatenated):

    PREFIX  +  query_ids  +  SEP + document_ids  +  SEP + TASK_PROMPT  +  SUFFIX

where query_ids encode ONE string, "instruction: {i}\\nquery: {q}" (or "query: {q}"
without an instruction), and document_ids encode "document: {d}".

Truncation rules (mxbai's, transcribed; the template pieces are never cut):
  * max_length is lowered to model_max_length - template_length when the two overflow.
  * the query string is cut to max_length * 3 // 4 tokens;
  * the document string is cut to min(model_max_length - len(query_ids) - template_length,
    max_length) tokens;
  * then SEP + document_ids (the "second sequence") is cut so that
    len(query_ids) + len(SEP + document_ids) <= max_length ("only_second").
Cuts happen on the tokenizer's `truncation_side` ("right" for Qwen), as HF's own
truncation would.

The score of a pair is logit(yes_id) - logit(no_id) at the last position, where yes_id /
no_id are the first ids of "1" / "0". `sigmoid_normalize` maps it to (0, 1) as mxbai's
`normalize=True` does.
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np

from prorank_jax import paths
from prorank_jax.run_folder import RUN_CONFIG_FILE

CHAT_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
CHAT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
SEP = "\n"
INSTRUCTION_TEMPLATE = "instruction: {instruction}"
QUERY_TEMPLATE = "query: {query}"
DOCUMENT_TEMPLATE = "document: {document}"
TASK_PROMPT = (
    "You are a search relevance expert who evaluates how well documents match search queries. "
    "For each query-document pair, carefully analyze the semantic relationship between them, "
    "then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
YES_TEXT = "1"
NO_TEXT = "0"
CHAT_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")

# mxbai's own table (estimated_max_cfg in mxbai_rerank_v2.py): the typical top raw score of
# each released checkpoint, so that sigmoid(score - max/2) spreads scores over (0, 1).
ESTIMATED_MAX_BY_MODEL: Mapping[str, float] = MappingProxyType(
    {
        "mixedbread-ai/mxbai-rerank-base-v2": 9.0,
        "mixedbread-ai/mxbai-rerank-large-v2": 12.0,
    }
)
# What MxbaiRerankV2 falls back to for any other model id (not utils' 9.0 default).
DEFAULT_ESTIMATED_MAX = 12.0

# Below this mxbai's 3/4 query budget degenerates (max_length 1 gives the query 0 tokens).
MIN_MAX_LENGTH = 4


def estimated_max_for(model_id: str | None) -> float:
    """mxbai's estimated maximum score for a hub id, DEFAULT_ESTIMATED_MAX when unknown."""
    if model_id is None:
        return DEFAULT_ESTIMATED_MAX
    return ESTIMATED_MAX_BY_MODEL.get(model_id, DEFAULT_ESTIMATED_MAX)


def sigmoid_normalize(scores: Any, estimated_max: float = DEFAULT_ESTIMATED_MAX) -> np.ndarray:
    """sigmoid(score - estimated_max / 2), mxbai's `normalize=True` mapping, in float64 numpy.

    Written as 1 / (1 + exp(-x)) like mxbai; numpy returns 0.0 (with an overflow
    warning suppressed) for very negative x instead of NaN, which is the right limit.
    """
    x = np.asarray(scores, dtype=np.float64) - float(estimated_max) / 2.0
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def query_text(query: str, instruction: str | None = None) -> str:
    """The query piece as one string; an empty or None instruction means none (as mxbai)."""
    text = QUERY_TEMPLATE.format(query=query)
    if instruction:
        text = INSTRUCTION_TEMPLATE.format(instruction=instruction) + SEP + text
    return text


def document_text(document: str) -> str:
    return DOCUMENT_TEMPLATE.format(document=document)


@dataclass(frozen=True)
class EncodedPair:
    """One prompt's ids (no padding) and whether mxbai's rules cut the query or document."""

    input_ids: tuple[int, ...]
    query_truncated: bool
    document_truncated: bool

    def __len__(self) -> int:
        return len(self.input_ids)


def _cut(ids: list[int], keep: int, side: str) -> list[int]:
    """Keep `keep` ids, dropping from `side` as HF truncation does."""
    keep = max(keep, 0)
    if len(ids) <= keep:
        return ids
    return ids[len(ids) - keep :] if side == "left" else ids[:keep]


def assemble_ids(
    query_ids: Sequence[int],
    document_ids: Sequence[int],
    *,
    prefix_ids: Sequence[int],
    sep_ids: Sequence[int],
    task_ids: Sequence[int],
    suffix_ids: Sequence[int],
    max_length: int,
    model_max_length: int,
    truncation_side: str = "right",
) -> EncodedPair:
    """Apply mxbai's truncation to untruncated query/document ids and join the pieces.

    `max_length` must already be the effective one (lowered for the template).
    Pure function of ids, so it can be checked without a tokenizer.
    """
    template_length = len(prefix_ids) + len(sep_ids) + len(task_ids) + len(suffix_ids)
    q = _cut(list(query_ids), max_length * 3 // 4, truncation_side)
    # Kept for fidelity: once max_length fits the model, the only_second cut below is
    # always at least as tight, so this cut never changes the result on its own.
    doc_budget = min(model_max_length - len(q) - template_length, max_length)
    d = _cut(list(document_ids), doc_budget, truncation_side)
    second = list(sep_ids) + d
    overflow = len(q) + len(second) - max_length
    if overflow > 0:
        second = _cut(second, len(second) - overflow, truncation_side)
    ids = list(prefix_ids) + q + second + list(sep_ids) + list(task_ids) + list(suffix_ids)
    return EncodedPair(
        input_ids=tuple(ids),
        query_truncated=len(q) < len(query_ids),
        document_truncated=len(second) < len(sep_ids) + len(document_ids),
    )


def _check_prompt_lengths(max_length: int | None, model_max_length: int) -> None:
    if not isinstance(model_max_length, int) or model_max_length <= 0:
        raise ValueError(f"model_max_length must be a positive int, got {model_max_length!r}")
    if max_length is not None and (not isinstance(max_length, int) or max_length <= 0):
        raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")


def _answer_ids(tokenizer: Any, yes_text: str, no_text: str) -> tuple[int, int]:
    """(yes id, no id): the two LM-head rows the score reads."""
    return (_single_token_id(tokenizer, yes_text, "its logit is the 'relevant' score"),
            _single_token_id(tokenizer, no_text, "its logit is the 'not relevant' score"))


def _truncation_side(tokenizer: Any) -> str:
    side = getattr(tokenizer, "truncation_side", "right")
    if side not in ("left", "right"):
        raise ValueError(f"tokenizer.truncation_side must be 'left' or 'right', got {side!r}")
    return side


def _single_token_id(tokenizer: Any, text: str, why: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    if len(ids) != 1 or (unk is not None and ids[0] == unk):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer {name!r}: {text!r} must encode to exactly one known token ({why}), "
            f"but add_special_tokens=False gives ids {ids}"
        )
    return ids[0]


MXBAI_V2 = "mxbai-v2"
QWEN3_RERANKER = "qwen3-reranker"


class RerankPrompt:
    """Builds mxbai-v2 reranking prompts with one tokenizer; template ids computed once.

    Args:
      tokenizer: a transformers tokenizer (callable, returns {"input_ids": ...}).
      max_length: budget for query + separator + document, mxbai's `max_length`
        (None means model_max_length, as mxbai). Lowered when it plus the template
        would exceed model_max_length; the effective value is `self.max_length`.
      model_max_length: the model's position limit (config max_position_embeddings).
    """

    family = MXBAI_V2

    def __init__(self, tokenizer: Any, max_length: int | None, model_max_length: int):
        _check_prompt_lengths(max_length, model_max_length)
        self.tokenizer = tokenizer
        for token in CHAT_SPECIAL_TOKENS:
            _single_token_id(tokenizer, token, "the Qwen chat template needs it as a special token")
        self.yes_id, self.no_id = _answer_ids(tokenizer, YES_TEXT, NO_TEXT)
        self.truncation_side = _truncation_side(tokenizer)

        self.prefix_ids = tuple(self._encode(CHAT_PREFIX))
        self.sep_ids = tuple(self._encode(SEP))
        self.task_ids = tuple(self._encode(TASK_PROMPT))
        self.suffix_ids = tuple(self._encode(CHAT_SUFFIX))
        self.template_length = len(self.prefix_ids) + len(self.sep_ids) + len(self.task_ids) + len(self.suffix_ids)

        self.model_max_length = model_max_length
        requested = max_length or model_max_length
        self.max_length = min(requested, model_max_length - self.template_length)
        if self.max_length < MIN_MAX_LENGTH:
            raise ValueError(
                f"model_max_length={model_max_length} leaves max_length={self.max_length} tokens for query and "
                f"document after the {self.template_length}-token template; need at least {MIN_MAX_LENGTH}"
            )

    @property
    def max_total_length(self) -> int:
        """Longest possible prompt: max_length plus the template (never above model_max_length)."""
        return self.max_length + self.template_length

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            raise ValueError("tokenizer has no pad_token_id; set tokenizer.pad_token before padding batches")
        return pad

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _assemble(self, query_ids: Sequence[int], document_ids: Sequence[int]) -> EncodedPair:
        return assemble_ids(
            query_ids,
            document_ids,
            prefix_ids=self.prefix_ids,
            sep_ids=self.sep_ids,
            task_ids=self.task_ids,
            suffix_ids=self.suffix_ids,
            max_length=self.max_length,
            model_max_length=self.model_max_length,
            truncation_side=self.truncation_side,
        )

    def encode(self, query: str, document: str, instruction: str | None = None) -> EncodedPair:
        return self.encode_batch([query], [document], instruction=instruction)[0]

    def encode_batch(
        self, queries: Sequence[str], documents: Sequence[str], instruction: str | None = None
    ) -> list[EncodedPair]:
        """Encode pairs (queries[i], documents[i]); repeated queries are tokenized once."""
        _check_pairs(queries, documents, instruction)
        unique_queries = list(dict.fromkeys(queries))
        query_ids = dict(
            zip(unique_queries, self._encode_many([query_text(q, instruction) for q in unique_queries]))
        )
        doc_ids = self._encode_many([document_text(d) for d in documents])
        return [self._assemble(query_ids[q], d) for q, d in zip(queries, doc_ids)]

    def truncation_message(self, queries_cut: int, documents_cut: int, total: int) -> str:
        budget = self.max_length
        return (
            f"{documents_cut} of {total} documents were truncated to fit max_length={budget} tokens "
            f"(query + document); {queries_cut} of {total} queries were truncated to {budget * 3 // 4} "
            "tokens (3/4 of max_length). They are scored on the kept text, as mxbai-rerank does."
        )


# ----------------------------------------------------------------------------- Qwen3-Reranker
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_BODY_TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
QWEN3_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_YES_TEXT = "yes"
QWEN3_NO_TEXT = "no"
QWEN3_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<think>", "</think>")
QWEN3_DEFAULT_MAX_LENGTH = 8192  # the model card's max_length


def qwen3_body_text(query: str, document: str, instruction: str | None = None) -> str:
    """The model card's format_instruction: None means the default instruction ("" stays empty)."""
    if instruction is None:
        instruction = QWEN3_DEFAULT_INSTRUCTION
    return QWEN3_BODY_TEMPLATE.format(instruction=instruction, query=query, document=document)


class Qwen3RerankPrompt:
    """Builds Qwen3-Reranker prompts as the Qwen3-Reranker model card's transformers code does.

        ids = prefix_ids + body_ids[:max_length - len(prefix_ids) - len(suffix_ids)] + suffix_ids

    The prefix (system prompt + "<|im_start|>user\\n") and suffix ("<|im_end|>\\n<|im_start|>assistant\\n"
    + an empty think block) are tokenized once; the body "<Instruct>: {i}\\n<Query>: {q}\\n<Document>: {d}"
    is tokenized as ONE string and cut as the card's `truncation='longest_first'` cuts a single
    sequence: from the tokenizer's truncation_side ("right" for Qwen), so the document goes
    first and the query only once the document is gone. The card tokenizes the body with the
    tokenizer's default add_special_tokens=True; Qwen tokenizers add no special tokens, so
    add_special_tokens=False here gives the same ids. The score is logit("yes") - logit("no");
    the card's probability softmax([no, yes])[yes] is its sigmoid.

    Args mirror RerankPrompt's, but max_length here is the whole prompt's length, template
    included (the card's meaning; None means model_max_length), lowered to model_max_length.
    Every pair of one query shares prefix + instruction + query ids, which the Reranker's
    shared-prefix path finds from the ids themselves.
    """

    family = QWEN3_RERANKER

    def __init__(self, tokenizer: Any, max_length: int | None, model_max_length: int):
        _check_prompt_lengths(max_length, model_max_length)
        self.tokenizer = tokenizer
        for token in QWEN3_SPECIAL_TOKENS:
            _single_token_id(tokenizer, token, "the Qwen3-Reranker template needs it as one token")
        self.yes_id, self.no_id = _answer_ids(tokenizer, QWEN3_YES_TEXT, QWEN3_NO_TEXT)
        self.truncation_side = _truncation_side(tokenizer)
        self.prefix_ids = tuple(self._encode(QWEN3_PREFIX))
        self.suffix_ids = tuple(self._encode(QWEN3_SUFFIX))
        self.template_length = len(self.prefix_ids) + len(self.suffix_ids)
        self.model_max_length = model_max_length
        self.max_length = min(max_length or model_max_length, model_max_length)
        if self.body_budget < MIN_MAX_LENGTH:
            raise ValueError(
                f"max_length={self.max_length} leaves {self.body_budget} tokens for instruction, query and "
                f"document after the {self.template_length}-token Qwen3-Reranker template; need at least "
                f"{MIN_MAX_LENGTH}"
            )

    @property
    def body_budget(self) -> int:
        """Tokens left for the body: the card's max_length - len(prefix) - len(suffix)."""
        return self.max_length - self.template_length

    @property
    def max_total_length(self) -> int:
        return self.max_length

    pad_id = RerankPrompt.pad_id
    _encode = RerankPrompt._encode
    _encode_many = RerankPrompt._encode_many

    def encode(self, query: str, document: str, instruction: str | None = None) -> EncodedPair:
        return self.encode_batch([query], [document], instruction=instruction)[0]

    def encode_batch(
        self, queries: Sequence[str], documents: Sequence[str], instruction: str | None = None
    ) -> list[EncodedPair]:
        """Encode pairs (queries[i], documents[i]); instruction None is the card's default one."""
        _check_pairs(queries, documents, instruction)
        bodies = self._encode_many([qwen3_body_text(q, d, instruction) for q, d in zip(queries, documents)])
        # What precedes the document, to tell a cut document from a cut query (counts only).
        unique_queries = list(dict.fromkeys(queries))
        heads = dict(zip(unique_queries, self._encode_many(
            [qwen3_body_text(q, "", instruction).rstrip(" ") for q in unique_queries])))
        budget = self.body_budget
        out = []
        for query, body in zip(queries, bodies):
            kept = _cut(body, budget, self.truncation_side)
            out.append(EncodedPair(
                input_ids=self.prefix_ids + tuple(kept) + self.suffix_ids,
                query_truncated=len(kept) < len(heads[query]),
                document_truncated=len(kept) < len(body),
            ))
        return out

    def truncation_message(self, queries_cut: int, documents_cut: int, total: int) -> str:
        return (
            f"{documents_cut} of {total} prompts were truncated to max_length={self.max_length} tokens "
            f"({self.body_budget} for instruction + query + document after the template), {queries_cut} of "
            f"them into the query. They are scored on the kept text, as the Qwen3-Reranker model card's "
            "truncation='longest_first' does."
        )


# ----------------------------------------------------------------------------- families
@dataclass(frozen=True)
class PromptFamily:
    """What a reranker family fixes: its prompt class, its answers and its normalisation.

    no_text / yes_text are the answers the model is taught (stage 1's allowed labels, in
    label order: index 0 = not relevant); the raw score is always logit(yes) - logit(no).
    uses_estimated_max: normalize=True is sigmoid(score - estimated_max / 2) (mxbai) rather
    than sigmoid(score), the probability of "yes" (Qwen3-Reranker).
    """

    name: str
    prompt_class: type
    no_text: str
    yes_text: str
    uses_estimated_max: bool
    default_max_length: int

    @property
    def answer_texts(self) -> tuple[str, str]:
        """(not relevant, relevant): index i is the answer to label i."""
        return (self.no_text, self.yes_text)

    def prompt(self, tokenizer: Any, max_length: int | None, model_max_length: int):
        return self.prompt_class(tokenizer, max_length, model_max_length)

    def normalize(self, scores: Any, estimated_max: float = DEFAULT_ESTIMATED_MAX) -> np.ndarray:
        return sigmoid_normalize(scores, estimated_max if self.uses_estimated_max else 0.0)


PROMPT_FAMILIES: Mapping[str, PromptFamily] = MappingProxyType({
    MXBAI_V2: PromptFamily(MXBAI_V2, RerankPrompt, NO_TEXT, YES_TEXT, uses_estimated_max=True,
                           default_max_length=8192),
    QWEN3_RERANKER: PromptFamily(QWEN3_RERANKER, Qwen3RerankPrompt, QWEN3_NO_TEXT, QWEN3_YES_TEXT,
                                 uses_estimated_max=False, default_max_length=QWEN3_DEFAULT_MAX_LENGTH),
})
DEFAULT_PROMPT_FAMILY = MXBAI_V2


def prompt_family(name: str | PromptFamily | None, where: str = "prompt_family") -> PromptFamily:
    """The family called `name` (None: the default, mxbai-v2); `where` names the setting in errors."""
    if isinstance(name, PromptFamily):
        return name
    if name is None:
        return PROMPT_FAMILIES[DEFAULT_PROMPT_FAMILY]
    try:
        return PROMPT_FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"{where}={name!r}: expected one of {sorted(PROMPT_FAMILIES)}") from None


def make_prompt(family: str | PromptFamily | None, tokenizer: Any, max_length: int | None, model_max_length: int):
    """The family's prompt builder (RerankPrompt or Qwen3RerankPrompt)."""
    return prompt_family(family).prompt(tokenizer, max_length, model_max_length)


# ----------------------------------------------------------------------------- which family a folder holds
PRORANK_FILE = "prorank.json"  # {"prompt_family": ...}, written into every HF folder this library saves
QWEN3_RERANKER_HINT = "qwen3-reranker"


def prorank_file_text(family: str | PromptFamily) -> str:
    """The PRORANK_FILE an HF folder is saved with."""
    return json.dumps({"prompt_family": prompt_family(family).name}, indent=2) + "\n"


def detect_prompt_family(folder: str | os.PathLike, override: str | None = None) -> str:
    """The prompt family of a model folder, first rule that applies:

    1. `override` (what the user forces: a config's prompt_family, --prompt-family);
    2. prorank.json's "prompt_family" (HF folders this library saves or exports);
    3. run_config.json's "prompt_family" (a prorank run folder);
    4. a Qwen3-Reranker checkpoint by name: "qwen3-reranker" (any case) in the folder's name,
       in a hub cache path's models--Org--Name part (.../models--Qwen--Qwen3-Reranker-0.6B/
       snapshots/<hash>) or in config.json's "_name_or_path", with model_type "qwen3" where
       config.json says;
    5. mxbai-v2.
    A malformed prorank.json / run_config.json or an unknown name is an error naming the file.
    """
    if override is not None:
        return prompt_family(override).name
    folder = paths.as_path(folder)
    for name in (PRORANK_FILE, RUN_CONFIG_FILE):
        path = folder / name
        if not path.is_file():
            continue
        try:
            saved = json.loads(path.read_text()).get("prompt_family")
        except (json.JSONDecodeError, AttributeError) as err:
            raise ValueError(f"{path}: expected a JSON object with a 'prompt_family' field ({err})") from None
        if saved is not None:
            return prompt_family(saved, where=f"{path}: prompt_family").name
    config: dict = {}
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError:
            config = {}
    # the folder's own name and a hub cache's models--Org--Name (not every parent folder's name)
    resolved = paths.absolute(folder) if paths.is_remote(folder) else folder.resolve()
    names = [resolved.name, str(config.get("_name_or_path") or "")]
    names += [part for part in resolved.parts if part.startswith("models--")]
    if any(QWEN3_RERANKER_HINT in n.lower() for n in names) and config.get("model_type", "qwen3") == "qwen3":
        return QWEN3_RERANKER
    return DEFAULT_PROMPT_FAMILY


def _check_pairs(queries: Sequence[str], documents: Sequence[str], instruction: str | None) -> None:
    """The input checks every prompt family's encode_batch makes before tokenizing."""
    if len(queries) != len(documents):
        raise ValueError(f"got {len(queries)} queries but {len(documents)} documents; they pair up one to one")
    _check_texts("instruction", [instruction] if instruction is not None else [], allow_empty=True)
    _check_texts("query", queries, allow_empty=False)
    _check_texts("document", documents, allow_empty=True)


def _check_texts(field: str, texts: Sequence[Any], *, allow_empty: bool) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{field} at index {i} must be a str, got {type(text).__name__}")
        if not allow_empty and not text.strip():
            raise ValueError(f"{field} at index {i} is empty; a reranking prompt needs a non-empty {field}")


def left_pad(
    sequences: Sequence[Sequence[int]], length: int, pad_id: int, dtype: Any = np.int32
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad id lists to `length`: returns (ids [B, length], attention_mask [B, length]).

    Left padding keeps every prompt's last token at the last column, where the score is read.
    A sequence longer than `length` is an error, never silently cut.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    ids = np.full((len(sequences), length), pad_id, dtype=dtype)
    mask = np.zeros((len(sequences), length), dtype=dtype)
    for row, seq in enumerate(sequences):
        n = len(seq)
        if n > length:
            raise ValueError(f"sequence {row} has {n} tokens, more than the padded length {length}")
        if n:
            ids[row, length - n :] = np.asarray(seq, dtype=dtype)
            mask[row, length - n :] = 1
    return ids, mask


def round_up_length(n: int, multiple: int = 8, cap: int | None = None) -> int:
    """n rounded up to a multiple (mxbai pads batches to multiples of 8), never above cap.

    The cap is itself rounded down to the multiple, as mxbai's ensure_multiple_of_8 does,
    unless that would drop below n (then n is returned: no sequence may be cut).
    """
    if n < 0 or multiple <= 0:
        raise ValueError(f"need n >= 0 and multiple > 0, got n={n}, multiple={multiple}")
    up = -(-n // multiple) * multiple
    if cap is not None:
        capped = cap - cap % multiple
        if up > capped:
            return max(capped, n)
    return up


def smallest_bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest of the ascending `buckets` that holds `length` tokens; a longer sequence is
    an error (never cut here)."""
    i = bisect.bisect_left(buckets, length)
    if i == len(buckets):
        raise ValueError(
            f"a prompt of {length} tokens is longer than the largest bucket {buckets[-1]} (buckets {tuple(buckets)})")
    return buckets[i]
