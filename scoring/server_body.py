"""Reading a rerank request body, strictly: Content-Type, UTF-8, nesting depth, JSON, then
the request models (scoring/server_api.py), each failure an ApiError naming what was wrong.

The checks run before json.loads so that a hostile body is refused for what it is (a
Latin-1 body is "not valid UTF-8", 10,000 nested arrays are "nested deeper than 32") rather
than surfacing as a parser's internal error.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from scoring.server_api import CohereRerankRequest, TeiRerankRequest, validation_message

MAX_JSON_DEPTH = 32
# A JSON string, escapes included (the unrolled form runs in linear time).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


class ApiError(Exception):
    """An answer with our error shape: status, message (naming the field), kind (the
    prorank_errors_total label) and extra headers (Retry-After)."""

    def __init__(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None,
                 detail: Any = None):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers, self.detail = headers or {}, detail


def check_content_type(value: str | None) -> None:
    if not value:
        raise ApiError(415, "Content-Type: missing; send 'Content-Type: application/json'", "unsupported_media_type")
    media, _, params = value.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiError(415, f"Content-Type: expected application/json, got {value!r}", "unsupported_media_type")
    charset = re.search(r"charset\s*=\s*\"?([\w-]+)", params, re.IGNORECASE)
    if charset and charset.group(1).lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise ApiError(415, f"Content-Type: charset must be utf-8, got {charset.group(1)!r}", "unsupported_media_type")


def json_depth(body: bytes) -> int:
    """Deepest nesting of arrays / objects in a JSON text (brackets inside strings ignored)."""
    structure = _JSON_STRING.sub(b'""', body)
    if not structure:
        return 0
    steps = _OPEN[np.frombuffer(structure, np.uint8)].astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def parse_json_object(body: bytes) -> dict:
    """The body as a JSON object, or an ApiError saying what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, f"body: not valid UTF-8 (byte 0x{body[err.start]:02x} at offset {err.start}); "
                            "JSON bodies must be UTF-8", "json") from None
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise ApiError(400, f"body: JSON nested {depth} levels deep, more than this server's limit of "
                            f"{MAX_JSON_DEPTH}", "json")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ApiError(400, f"body: malformed JSON ({err.msg} at line {err.lineno} column {err.colno})",
                       "json") from None
    if not isinstance(value, dict):
        raise ApiError(422, f"body: expected a JSON object, got {_json_type(value)}", "validation")
    return value


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def validate(model: type[BaseModel], value: dict) -> BaseModel:
    try:
        return model.model_validate(value)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        raise ApiError(422, validation_message(errors), "validation", detail=detail) from None


def body_model(value: dict) -> type[BaseModel]:
    """TEI's body has `texts`, the Cohere / Jina / vLLM / Infinity body `documents`; a body
    with neither is checked as the Cohere one (whose error then names `documents`)."""
    return TeiRerankRequest if "texts" in value and "documents" not in value else CohereRerankRequest


def parse_rerank_body(body: bytes, content_type: str | None) -> BaseModel:
    """A CohereRerankRequest or TeiRerankRequest from a request's bytes and Content-Type."""
    check_content_type(content_type)
    value = parse_json_object(body)
    return validate(body_model(value), value)
