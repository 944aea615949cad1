"""The rerank HTTP server: a FastAPI app over a Reranker and a DynamicBatcher.

    app = create_app(Reranker.from_pretrained(path), ServerSettings())
    uvicorn.run(app)          # or `prorank serve --model PATH`

Endpoints (scoring/server_api.py has the shapes):
  POST /v1/rerank, /v2/rerank   Cohere / Jina / vLLM body and answer
  POST /rerank                  Hugging Face TEI body and answer
  GET  /health                  200 once every batch shape is compiled, 503 before
  GET  /info                    model, lengths, devices, limits, score semantics, version
  GET  /metrics                 Prometheus text (scoring/server_metrics.py)
  GET  /docs, /openapi.json     FastAPI's OpenAPI pages

A request is tokenized with mxbai's prompt rules (the Reranker's RerankPrompt) on a worker
thread of the event loop, handed to the batcher, which merges it with concurrent requests
and runs them through the Reranker's jitted whole-prompt scorer on ladder shapes compiled
before /health turns ready; the scores come back to the request, are normalised unless
raw_scores, ordered (score descending, ties by index) and cut to top_n.

Errors: malformed JSON 400; a missing, wrong-typed or out-of-range field 422; more
documents than --max-documents or a body over --max-request-bytes 413 (also TEI's
truncate=false with a document over the budget); a wrong API key 401; not ready 503. The
message names the field. A client that leaves is dropped from its batch (or its scores are
discarded); the other requests are not affected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Sequence

import jax
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from prorank_jax import __version__
from prorank_jax import sharding as shd
from prorank_jax.prompts import EncodedPair, RerankPrompt, document_text, query_text
from scoring.dynamic_batcher import MIN_VARIABLE_TOKENS, DynamicBatcher, Job, serving_ladder
from scoring.server_api import (
    CohereRerankRequest,
    Scored,
    TeiRerankRequest,
    cohere_response,
    error_body,
    field_path,
    tei_response,
    validation_message,
)
from scoring.server_metrics import ServerMetrics

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_TOKENS = 16384
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_MAX_DOCUMENTS = 1000
DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
RERANK_ENDPOINTS = ("/v1/rerank", "/v2/rerank", "/rerank")
KNOWN_ENDPOINTS = RERANK_ENDPOINTS + ("/health", "/info", "/metrics")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left; never seen by that client
SCORE_SEMANTICS = (
    "relevance_score (Cohere shape) and score (TEI shape) are mxbai-rerank's normalised score "
    "sigmoid(s - estimated_max / 2) by default; with raw_scores=true they are the raw s = "
    "logit('1') - logit('0') at the last prompt position. Higher is more relevant. For the "
    "qwen3-reranker prompt family estimated_max is 0: the normalised score is sigmoid(s) = P('yes'), "
    "s = logit('yes') - logit('no')."
)


@dataclass(frozen=True)
class ServerSettings:
    """What `prorank serve` configures beyond the Reranker (see launch/serve.py)."""

    model_name: str = "prorank"
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_batch_rows: int = 32
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_documents: int = DEFAULT_MAX_DOCUMENTS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    api_key: str | None = None

    def __post_init__(self):
        for name in ("max_batch_tokens", "max_batch_rows", "max_documents", "max_request_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class ClientGone(Exception):
    """The client disconnected before its scores were ready."""


# ----------------------------------------------------------------------------- encoding
def encode_pairs(
    prompt: RerankPrompt,
    query: str,
    documents: Sequence[str],
    instruction: str | None = None,
    max_tokens_per_doc: int | None = None,
) -> list[EncodedPair]:
    """mxbai's prompts of (query, document) pairs; max_tokens_per_doc (Cohere v2) first cuts
    each document piece ("document: {text}") to that many tokens, then mxbai's rules apply."""
    if max_tokens_per_doc is None:
        return prompt.encode_batch([query] * len(documents), list(documents), instruction=instruction)
    if not isinstance(prompt, RerankPrompt):
        raise ValueError("max_tokens_per_doc: supported for the mxbai-v2 prompt family only; this server's "
                         "family cuts the document by its own longest_first rule (send no max_tokens_per_doc)")
    prompt.encode_batch([query], [""], instruction=instruction)  # the same input checks
    query_ids = prompt._encode_many([query_text(query, instruction)])[0]
    out = []
    for doc_ids in prompt._encode_many([document_text(d) for d in documents]):
        pair = prompt._assemble(query_ids, doc_ids[:max_tokens_per_doc])
        if len(doc_ids) > max_tokens_per_doc:
            pair = dataclasses.replace(pair, document_truncated=True)
        out.append(pair)
    return out


# ----------------------------------------------------------------------------- ASGI guard
class RequestGuard:
    """Pure ASGI middleware: body size limit (413 before the app sees the body) and the
    per-endpoint request count / latency metrics. The body is read here and replayed, and
    later receive() calls reach the server, so a handler can still see a disconnect."""

    def __init__(self, app, metrics: ServerMetrics, max_request_bytes: int):
        self.app, self.metrics, self.max_request_bytes = app, metrics, max_request_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in KNOWN_ENDPOINTS else "other"
        started, status = time.perf_counter(), [500]
        rerank = endpoint in RERANK_ENDPOINTS
        if rerank:
            self.metrics.in_flight.inc()

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            if body is None:
                await self._too_large(send_status)
                return
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_status)
        finally:
            if rerank:
                self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)

    async def _read_body(self, scope, receive) -> bytes | None:
        """The whole body, or None when it exceeds the limit."""
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_request_bytes:
                return None
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_request_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, send) -> None:
        self.metrics.errors.labels("too_large").inc()
        message = f"body: request body exceeds this server's limit of {self.max_request_bytes} bytes (--max-request-bytes)"
        payload = json.dumps(error_body(message, "too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# ----------------------------------------------------------------------------- app
def create_app(reranker, settings: ServerSettings | None = None) -> FastAPI:
    """The ASGI app serving `reranker` (a scoring.reranker.Reranker)."""
    settings = settings or ServerSettings()
    prompt: RerankPrompt = reranker.prompt
    ladder = serving_ladder(prompt.template_length + MIN_VARIABLE_TOKENS, prompt.max_total_length,
                            settings.max_batch_tokens, settings.max_batch_rows, reranker.steps_per_octave)
    score_fn, params = reranker._score_fn, reranker.params

    mesh = shd.mesh_of(params)

    def run_batch(ids: np.ndarray, mask: np.ndarray):
        # Split on its rows over the reranker's devices (all local ones), as Reranker.predict does.
        return score_fn(params, *reranker._place(ids, mask))

    def compile_shape(rows: int, length: int) -> None:
        sharding = None if mesh is None else shd.rows_sharding((rows, length), mesh)
        spec = jax.ShapeDtypeStruct((rows, length), np.int32, sharding=sharding)
        score_fn.lower(params, spec, spec).compile()

    batcher_box: list[DynamicBatcher] = []
    metrics = ServerMetrics(pending_jobs=lambda: batcher_box[0].pending if batcher_box else 0)
    batcher = DynamicBatcher(run_batch, compile_shape, ladder, reranker.pad_id, settings.max_batch_tokens,
                             settings.max_wait_ms / 1000.0, metrics)
    batcher_box.append(batcher)
    # sigmoid(s - 0 / 2) is the probability of "yes", the normalisation of families without estimated_max
    estimated_max = reranker.estimated_max if reranker.family.uses_estimated_max else 0.0

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        watcher = asyncio.create_task(_announce_ready())
        yield
        watcher.cancel()
        # Requests still in flight were drained by uvicorn before this point; the worker
        # finishes whatever it still holds and ends.
        await run_in_threadpool(batcher.stop)

    async def _announce_ready():
        await run_in_threadpool(batcher.settled.wait)
        if not batcher.ready.is_set():
            return
        metrics.mark_ready(len(ladder.shapes), batcher.warmup_seconds or 0.0)
        log.info("ready: %d batch shapes compiled in %.1f s", len(ladder.shapes), batcher.warmup_seconds or 0.0)

    app = FastAPI(title="prorank-jax rerank server", version=__version__, lifespan=lifespan,
                  description=SCORE_SEMANTICS)
    app.add_middleware(RequestGuard, metrics=metrics, max_request_bytes=settings.max_request_bytes)
    app.state.batcher, app.state.metrics, app.state.ladder = batcher, metrics, ladder

    # ------------------------------------------------------------------------- errors
    def _error(status: int, message: str, kind: str, detail: Any = None) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        return JSONResponse(error_body(message, kind, detail), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = list(exc.errors())
        bad_json = [e for e in errors if e.get("type") == "json_invalid"]
        if bad_json:
            ctx = bad_json[0].get("ctx", {}).get("error", "")
            where = field_path(bad_json[0].get("loc", ()))
            return _error(400, f"body: malformed JSON ({ctx}; at {where})", "json")
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        return _error(422, validation_message(errors), "validation", detail)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.kind)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("request failed")
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", "internal")

    # ------------------------------------------------------------------------- auth
    def require_api_key(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), settings.api_key.encode()):
            raise ApiError(401, "Authorization: expected the header 'Authorization: Bearer <api key>' with this "
                                "server's key (--api-key-file)", "unauthorized")

    # ------------------------------------------------------------------------- scoring
    async def score(request: Request, query: str, documents: list[str], field: str, *,
                    instruction: str | None, max_tokens_per_doc: int | None = None,
                    allow_truncation: bool = True) -> Scored:
        if not batcher.ready.is_set():
            raise ApiError(503, "the server is still compiling its batch shapes; retry when /health answers 200",
                           "not_ready")
        if len(documents) > settings.max_documents:
            raise ApiError(413, f"{field}: {len(documents)} documents, more than this server's limit of "
                                f"{settings.max_documents} (--max-documents)", "too_large")
        try:
            encoded = await run_in_threadpool(encode_pairs, prompt, query, documents, instruction, max_tokens_per_doc)
        except (TypeError, ValueError) as err:
            raise ApiError(422, str(err), "validation") from None
        if not allow_truncation:
            for i, e in enumerate(encoded):
                if e.document_truncated or e.query_truncated:
                    what = f"{field}[{i}]" if e.document_truncated else "query"
                    raise ApiError(413, f"{what}: the pair exceeds max_length={prompt.max_length} tokens "
                                        "(query + document); send truncate=true to cut it as mxbai-rerank does",
                                   "too_large")
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def resolve(value):
            if future.done():
                return
            if isinstance(value, BaseException):
                future.set_exception(value)
            else:
                future.set_result(value)

        def deliver(value):
            try:
                loop.call_soon_threadsafe(resolve, value)
            except RuntimeError:  # the loop has closed: nobody is waiting
                pass

        job = batcher.submit(Job([e.input_ids for e in encoded], deliver))
        gone = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({future, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not future.done():
            job.cancel()
            metrics.disconnects.inc()
            raise ClientGone()
        raw = future.result()
        scored = Scored(raw=raw, tokens=sum(len(e) for e in encoded),
                        truncated_documents=sum(e.document_truncated for e in encoded),
                        truncated_queries=sum(e.query_truncated for e in encoded))
        metrics.pairs.inc(len(encoded))
        metrics.tokens.inc(scored.tokens)
        metrics.truncated_documents.inc(scored.truncated_documents)
        return scored

    def _truncation_headers(scored: Scored) -> dict[str, str]:
        return {"X-Truncated-Documents": str(scored.truncated_documents),
                "X-Truncated-Queries": str(scored.truncated_queries)}

    async def cohere(request: Request, body: CohereRerankRequest, api_version: str):
        try:
            scored = await score(request, body.query, body.documents, "documents", instruction=body.instruction,
                                 max_tokens_per_doc=body.max_tokens_per_doc)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        payload = cohere_response(body, scored, body.model or settings.model_name, estimated_max,
                                  prompt.max_length, api_version)
        return JSONResponse(payload, headers=_truncation_headers(scored))

    @app.post("/v1/rerank", dependencies=[Depends(require_api_key)], summary="Cohere v1 / Jina rerank")
    async def rerank_v1(request: Request, body: CohereRerankRequest):
        return await cohere(request, body, "1")

    @app.post("/v2/rerank", dependencies=[Depends(require_api_key)], summary="Cohere v2 rerank")
    async def rerank_v2(request: Request, body: CohereRerankRequest):
        return await cohere(request, body, "2")

    @app.post("/rerank", dependencies=[Depends(require_api_key)], summary="Hugging Face TEI rerank")
    async def rerank_tei(request: Request, body: TeiRerankRequest):
        try:
            scored = await score(request, body.query, body.texts, "texts", instruction=body.instruction,
                                 allow_truncation=body.truncate)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return JSONResponse(tei_response(body, scored, estimated_max), headers=_truncation_headers(scored))

    # ------------------------------------------------------------------------- status
    @app.get("/health")
    async def health():
        if batcher.warmup_error is not None:
            return JSONResponse({"status": "failed", "error": str(batcher.warmup_error)}, status_code=503)
        if not batcher.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        startup, serving = metrics.compiles()
        return {
            "model_id": settings.model_name,
            "model_type": reranker.config.model_type,
            "model_dtype": reranker.config.dtype,
            "version": __version__,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.local_devices()],
            "max_input_length": prompt.max_length,
            "max_total_length": prompt.max_total_length,
            "max_batch_tokens": settings.max_batch_tokens,
            "max_batch_rows": settings.max_batch_rows,
            "max_wait_ms": settings.max_wait_ms,
            "max_client_batch_size": settings.max_documents,
            "max_request_bytes": settings.max_request_bytes,
            "estimated_max": estimated_max,
            "score": SCORE_SEMANTICS,
            "ready": batcher.ready.is_set(),
            "batch_shapes": len(ladder.shapes),
            "batch_lengths": list(ladder.lengths),
            "warmup_seconds": batcher.warmup_seconds,
            "compiles": {"startup": startup, "serving": serving},
            "auth": settings.api_key is not None,
        }

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
