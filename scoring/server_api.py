"""The HTTP shapes the rerank server speaks: pydantic request models and response builders.

* Cohere / Jina / vLLM body {model, query, documents: [str | {text}], top_n,
  return_documents, max_tokens_per_doc}
  -> {id, model, results: [{index, relevance_score, document?: {text}}], meta, usage}.
  Infinity's answer is the same with `document` a plain string (its clients read it so).
* Hugging Face TEI body {query, texts, truncate, raw_scores, return_text}
  -> [{index, score, text?}] sorted by score.
Which body a request carries is told by its fields (`texts` or `documents`), so every
rerank path accepts both and answers in the shape of the body it got.

Extension fields on both: `instruction` (mxbai's instruction line) and, on the Cohere shape,
`raw_scores`. Scores are mxbai's normalised score sigmoid(s - estimated_max / 2) unless
raw_scores is true, then the raw s = logit("1") - logit("0").

Validation is strict: a wrong JSON type is an error, never coerced (`top_n: true` is not 1,
`"yes"` is not true), and every string must be valid Unicode (no lone surrogates).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from scoring.reranker import top_k_order


def lone_surrogate_at(text: str) -> int | None:
    """Index of the first lone UTF-16 surrogate (JSON's "\\ud800" escapes decode to one), or None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as err:
        return err.start


def _valid_unicode(value: Any) -> Any:
    if isinstance(value, str) and (at := lone_surrogate_at(value)) is not None:
        raise ValueError(f"contains a lone UTF-16 surrogate (U+{ord(value[at]):04X}) at character {at}; "
                         "send valid Unicode text")
    return value


def _document_text(value: Any) -> Any:
    """A document is a string or an object whose "text" is a string (Cohere v1, Jina)."""
    if isinstance(value, dict):
        if "text" not in value:
            raise ValueError(f"an object document needs a 'text' field, got keys {sorted(value)}")
        value = value["text"]
    if not isinstance(value, str):
        raise ValueError(f"expected a string or an object with a 'text' string, got {type(value).__name__}")
    return _valid_unicode(value)


UnicodeText = Annotated[str, BeforeValidator(_valid_unicode)]
DocumentText = Annotated[str, BeforeValidator(_document_text), WithJsonSchema({"anyOf": [
    {"type": "string"}, {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}]})]


def _non_empty_query(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty; a reranking prompt needs a query")
    return value


class CohereRerankRequest(BaseModel):
    """Cohere v1/v2, Jina, vLLM and Infinity rerank body."""

    model_config = ConfigDict(strict=True)

    model: UnicodeText | None = Field(default=None, description="ignored: answers name the served model")
    query: UnicodeText
    documents: list[DocumentText] = Field(min_length=1, description="strings or objects with a 'text' string")
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    max_tokens_per_doc: int | None = Field(default=None, ge=1)
    instruction: UnicodeText | None = None
    raw_scores: bool = False

    _query = field_validator("query")(_non_empty_query)


class TeiRerankRequest(BaseModel):
    """Hugging Face text-embeddings-inference rerank body."""

    model_config = ConfigDict(strict=True)

    query: UnicodeText
    texts: list[UnicodeText] = Field(min_length=1)
    truncate: bool = False
    truncation_direction: Literal["Right", "right"] = "Right"
    raw_scores: bool = False
    return_text: bool = False
    instruction: UnicodeText | None = None

    _query = field_validator("query")(_non_empty_query)


# ----------------------------------------------------------------------------- answers (for OpenAPI)
class CohereDocument(BaseModel):
    text: str


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: CohereDocument | str | None = Field(
        default=None, description="with return_documents: {text} (Cohere, Jina, vLLM); a plain string on the "
                                  "/infinity paths (Infinity)")


class CohereRerankResponse(BaseModel):
    id: str
    model: str
    results: list[CohereResult]
    meta: dict[str, Any]
    usage: dict[str, int]


class TeiResult(BaseModel):
    index: int
    score: float
    text: str | None = None


class ErrorResponse(BaseModel):
    message: str = Field(description="what was wrong, naming the field (Cohere's key)")
    error: str = Field(description="the same message (TEI's key)")
    error_type: str = Field(description="json, validation, unsupported_media_type, too_large, unauthorized, "
                                        "overloaded, not_ready, not_found, method_not_allowed, timeout, internal")
    detail: Any = None


@dataclass(frozen=True)
class Scored:
    """One request's outcome: raw scores in input order and what the prompt rules did."""

    raw: np.ndarray
    tokens: int
    truncated_documents: int
    truncated_queries: int

    def values(self, raw_scores: bool, estimated_max: float) -> np.ndarray:
        if raw_scores:
            return self.raw
        from prorank_jax.prompts import sigmoid_normalize

        return sigmoid_normalize(self.raw, estimated_max).astype(np.float32)


def truncation_warning(scored: Scored, n: int, max_length: int) -> list[str]:
    """mxbai's TruncationWarning, as Cohere's meta.warnings carries it."""
    if not (scored.truncated_documents or scored.truncated_queries):
        return []
    return [
        f"{scored.truncated_documents} of {n} documents were truncated to fit max_length={max_length} tokens "
        f"(query + document); {scored.truncated_queries} of {n} queries were truncated to {max_length * 3 // 4} "
        "tokens (3/4 of max_length). They are scored on the kept text, as mxbai-rerank does."
    ]


def cohere_response(
    body: CohereRerankRequest, scored: Scored, model: str, estimated_max: float, max_length: int, api_version: str,
    document_as_string: bool = False,
) -> dict:
    values = scored.values(body.raw_scores, estimated_max)
    top = body.top_n or len(values)
    results = []
    for i in top_k_order(values, top):
        item: dict[str, Any] = {"index": int(i), "relevance_score": float(values[i])}
        if body.return_documents:
            text = body.documents[i]
            item["document"] = text if document_as_string else {"text": text}
        results.append(item)
    meta = {
        "api_version": {"version": api_version},
        "billed_units": {"search_units": 1},
        "tokens": {"input_tokens": scored.tokens},
        "warnings": truncation_warning(scored, len(values), max_length),
        "truncated_documents": scored.truncated_documents,
        "truncated_queries": scored.truncated_queries,
    }
    return {
        "id": str(uuid.uuid4()),
        "model": model,
        "results": results,
        "meta": meta,
        "usage": {"total_tokens": scored.tokens, "prompt_tokens": scored.tokens},
    }


def tei_response(body: TeiRerankRequest, scored: Scored, estimated_max: float) -> list[dict]:
    values = scored.values(body.raw_scores, estimated_max)
    out = []
    for i in top_k_order(values, len(values)):
        item: dict[str, Any] = {"index": int(i), "score": float(values[i])}
        if body.return_text:
            item["text"] = body.texts[i]
        out.append(item)
    return out


def field_path(loc: tuple | list) -> str:
    """pydantic's error location as a field path: ("body", "documents", 2) -> "documents[2]"."""
    parts = [p for p in loc if p != "body"]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def validation_message(errors: list[dict]) -> str:
    """One line per error, naming the field and what was expected."""
    lines = []
    for err in errors:
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") == "missing":
            msg = "field required"
        lines.append(f"{field_path(err.get('loc', ()))}: {msg}")
    return "; ".join(lines)


def error_body(message: str, kind: str, detail: Any = None) -> dict:
    """Errors carry Cohere's `message` and TEI's `error` / `error_type`."""
    body = {"message": message, "error": message, "error_type": kind}
    if detail is not None:
        body["detail"] = detail
    return body
