"""The rerank server's OpenAPI schema and its /docs page, complete and offline.

Rerank endpoints read their body themselves (scoring/server_body.py: strict, with errors
FastAPI's parser cannot name), so FastAPI cannot infer their schema; `rerank_operation`
describes it: the Cohere or TEI body in, the matching answer out, and our error shape for
every 4xx / 5xx. /docs is Swagger UI with its JavaScript and CSS served from the
swagger-ui-bundle package, so the page works without internet access.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema

from scoring.server_api import CohereRerankRequest, CohereRerankResponse, ErrorResponse, TeiRerankRequest, TeiResult

DOCS_ASSETS = "/docs/assets"
_REF = "#/components/schemas/{model}"
ERROR_STATUSES = {
    "400": "malformed JSON, invalid UTF-8, or nesting deeper than 32",
    "401": "missing or wrong API key (with --api-key-file)",
    "408": "the body did not arrive within --body-timeout",
    "413": "body over --max-request-bytes, more than --max-documents documents, or (TEI, truncate=false) "
           "a pair over the token budget",
    "415": "missing or wrong Content-Type (application/json)",
    "422": "a missing, wrong-typed or out-of-range field, or a lone surrogate; the message names the field",
    "429": "over --max-inflight-bytes or --max-queued-tokens; see Retry-After",
    "503": "still compiling batch shapes (see /health); see Retry-After",
}


def _ref(model) -> dict:
    return {"$ref": _REF.format(model=model.__name__)}


def rerank_operation(document_as_string: bool) -> dict:
    """openapi_extra of one rerank route: its request body and answers."""
    tei_answer = {"type": "array", "items": _ref(TeiResult)}
    errors = {status: {"description": why, "content": {"application/json": {"schema": _ref(ErrorResponse)}}}
              for status, why in ERROR_STATUSES.items()}
    ok = ("the Cohere answer with each document as a plain string (Infinity)" if document_as_string
          else "the Cohere answer for a Cohere body, TEI's list for a TEI body")
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "anyOf": [_ref(CohereRerankRequest), _ref(TeiRerankRequest)]}}}},
        "responses": {"200": {"description": ok, "content": {"application/json": {"schema": {
            "anyOf": [_ref(CohereRerankResponse), tei_answer]}}}}, **errors},
    }


def install_docs(app: FastAPI) -> None:
    """/openapi.json with the rerank models in its components, and the offline /docs page."""
    import swagger_ui_bundle

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            _, defs = models_json_schema(
                [(m, "validation") for m in (CohereRerankRequest, TeiRerankRequest)]
                + [(m, "serialization") for m in (CohereRerankResponse, TeiResult, ErrorResponse)],
                ref_template=_REF)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - docs",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")
