"""The HTTP shapes the rerank server speaks: pydantic request models and response builders.

* Cohere `POST /v1/rerank`, `/v2/rerank` (also Jina's, vLLM's and Infinity's body):
  {model, query, documents: [str | {text}], top_n, return_documents, max_tokens_per_doc}
  -> {id, model, results: [{index, relevance_score, document?: {text}}], meta, usage}.
* Hugging Face TEI `POST /rerank`: {query, texts, truncate, raw_scores, return_text}
  -> [{index, score, text?}] sorted by score.

Extension fields on both: `instruction` (mxbai's instruction line) and, on the Cohere shape,
`raw_scores`. Scores are mxbai's normalised score sigmoid(s - estimated_max / 2) unless
raw_scores is true, then the raw s = logit("1") - logit("0").
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, Field, field_validator

from scoring.reranker import top_k_order


def _document_text(value: Any) -> Any:
    """A document is a string or an object whose "text" is a string (Cohere v1, Jina)."""
    if isinstance(value, dict):
        if "text" not in value:
            raise ValueError(f"an object document needs a 'text' field, got keys {sorted(value)}")
        value = value["text"]
    if not isinstance(value, str):
        raise ValueError(f"expected a string or an object with a 'text' string, got {type(value).__name__}")
    return value


DocumentText = Annotated[str, BeforeValidator(_document_text)]


def _non_empty_query(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty; a reranking prompt needs a query")
    return value


class CohereRerankRequest(BaseModel):
    model: str | None = None
    query: str
    documents: list[DocumentText] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    max_tokens_per_doc: int | None = Field(default=None, ge=1)
    instruction: str | None = None
    raw_scores: bool = False

    _query = field_validator("query")(_non_empty_query)


class TeiRerankRequest(BaseModel):
    query: str
    texts: list[str] = Field(min_length=1)
    truncate: bool = False
    truncation_direction: Literal["Right", "right"] = "Right"
    raw_scores: bool = False
    return_text: bool = False
    instruction: str | None = None

    _query = field_validator("query")(_non_empty_query)


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
    body: CohereRerankRequest, scored: Scored, model: str, estimated_max: float, max_length: int, api_version: str
) -> dict:
    values = scored.values(body.raw_scores, estimated_max)
    top = body.top_n or len(values)
    results = []
    for i in top_k_order(values, top):
        item: dict[str, Any] = {"index": int(i), "relevance_score": float(values[i])}
        if body.return_documents:
            item["document"] = {"text": body.documents[i]}
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
        msg = err.get("msg", "invalid")
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
