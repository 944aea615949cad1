"""The rerank HTTP server: a FastAPI app over a Reranker and a DynamicBatcher.

    app = create_app(Reranker.from_pretrained(path), ServerSettings())
    scoring.server_runtime.serve(app, ...)     # or `prorank serve --model PATH`

Endpoints (scoring/server_api.py has the shapes):
  POST /rerank, /v1/rerank, /v2/rerank, /v1/v2/rerank
        Cohere / Jina / vLLM body and answer, or Hugging Face TEI's (told by `texts`)
  POST /infinity/rerank, /infinity/v1/rerank
        the same with Infinity's answer (`document` a plain string)
  GET  /health                  200 once every batch shape is compiled, 503 before
  GET  /info                    model, lengths, devices, limits, score semantics, version
  GET  /metrics                 Prometheus text (scoring/server_metrics.py)
  GET  /docs, /openapi.json     Swagger UI (assets from the swagger-ui-bundle package) and OpenAPI

A request's body is checked and parsed on a worker thread (scoring/server_body.py), its
texts cut early to the token budget and tokenized with mxbai's prompt rules
(scoring/server_encoding.py), handed to the batcher, which interleaves it with concurrent
requests and runs them through the Reranker's jitted whole-prompt scorer on ladder shapes
compiled before /health turns ready; the scores come back to the request, are normalised
unless raw_scores, ordered (score descending, ties by index) and cut to top_n.

Limits (each refusal in our error shape, counted in prorank_errors_total by kind): a body
over --max-request-bytes or more documents than --max-documents 413; bodies in progress
over --max-inflight-bytes, or queued prompt tokens over --max-queued-tokens, 429 with
Retry-After; not ready 503 with Retry-After; a body not sent within --body-timeout 408.
Bad input: a wrong or missing Content-Type 415; invalid UTF-8, nesting deeper than 32 or
malformed JSON 400; a missing, wrong-typed (never coerced) or out-of-range field, or a lone
surrogate 422; a wrong API key 401; unknown path 404, wrong method 405. The message names
the field. A client that leaves is dropped before its next pair is batched.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from prorank_jax import __version__
from prorank_jax import sharding as shd
from prorank_jax.prompts import RerankPrompt
from scoring.dynamic_batcher import MIN_VARIABLE_TOKENS, DynamicBatcher, Job, serving_ladder
from scoring.server_api import (
    Scored,
    TeiRerankRequest,
    cohere_response,
    error_body,
    tei_response,
    validation_message,
)
from scoring.server_body import ApiError, parse_rerank_body
from scoring.server_encoding import encode_pairs  # noqa: F401  (the server's encoding, importable here)
from scoring.server_guard import GuardSettings, RequestGuard
from scoring.server_metrics import ServerMetrics
from scoring.server_openapi import install_docs, rerank_operation

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_TOKENS = 16384
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_MAX_DOCUMENTS = 1000
DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5.0
# Below Kubernetes' default 30 s termination grace period, and well above one batch of the
# default budget on a CPU (bench/RESULTS.md): requests fully received are answered.
DEFAULT_SHUTDOWN_TIMEOUT_S = 25.0
COHERE_ENDPOINTS = {"/rerank": "1", "/v1/rerank": "1", "/v2/rerank": "2", "/v1/v2/rerank": "2"}
INFINITY_ENDPOINTS = ("/infinity/rerank", "/infinity/v1/rerank")
RERANK_ENDPOINTS = tuple(COHERE_ENDPOINTS) + INFINITY_ENDPOINTS
KNOWN_ENDPOINTS = RERANK_ENDPOINTS + ("/health", "/info", "/metrics")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left; never seen by that client
SCORE_SEMANTICS = (
    "relevance_score (Cohere shape) and score (TEI shape) are mxbai-rerank's normalised score "
    "sigmoid(s - estimated_max / 2) by default; with raw_scores=true they are the raw s = "
    "logit('1') - logit('0') at the last prompt position. Higher is more relevant. For the "
    "qwen3-reranker prompt family estimated_max is 0: the normalised score is sigmoid(s) = P('yes'), "
    "s = logit('yes') - logit('no')."
)


def default_max_inflight_bytes() -> int:
    """1/64 of the machine's memory, within 16 MiB..256 MiB: a parsed body costs a few times
    its bytes, so this keeps request bodies to a few percent of memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 4 << 30
    return int(min(256 << 20, max(16 << 20, total // 64)))


def default_max_queued_tokens(max_batch_tokens: int) -> int:
    """64 batches' worth of prompt tokens waiting: past that, a new request waits more than 64
    batch times, better spent retrying elsewhere."""
    return 64 * max_batch_tokens


@dataclass(frozen=True)
class ServerSettings:
    """What `prorank serve` configures beyond the Reranker (see launch/serve.py)."""

    model_name: str = "prorank"
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_batch_rows: int = 32
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_documents: int = DEFAULT_MAX_DOCUMENTS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_inflight_bytes: int | None = None  # None: default_max_inflight_bytes()
    max_queued_tokens: int | None = None  # None: default_max_queued_tokens(max_batch_tokens)
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    keep_alive_timeout_s: float = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    requested_max_length: int | None = None  # what the user asked for, to say when it was lowered
    api_key: str | None = None

    def __post_init__(self):
        if self.max_inflight_bytes is None:
            object.__setattr__(self, "max_inflight_bytes", max(default_max_inflight_bytes(), self.max_request_bytes))
        if self.max_queued_tokens is None:
            object.__setattr__(self, "max_queued_tokens", default_max_queued_tokens(self.max_batch_tokens))
        for name in ("max_batch_tokens", "max_batch_rows", "max_documents", "max_request_bytes",
                     "max_inflight_bytes", "max_queued_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if self.max_inflight_bytes < self.max_request_bytes:
            raise ValueError(f"max_inflight_bytes={self.max_inflight_bytes} is below max_request_bytes="
                             f"{self.max_request_bytes}: a body of the allowed size could never be admitted")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s", "shutdown_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


class ClientGone(Exception):
    """The client disconnected before its scores were ready."""



class _TokenizerLengthWarning(logging.Filter):
    """Drops transformers' "Token indices sequence length is longer than the specified maximum"
    warning: the server cuts every prompt to its own budget after tokenizing (mxbai's rules),
    so the tokenizer's model_max_length is not a limit here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "sequence length is longer than the specified maximum" not in record.getMessage()


def _quiet_tokenizer_length_warning() -> None:
    for name in ("transformers.tokenization_utils_base", "transformers.tokenization_utils_fast"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _TokenizerLengthWarning) for f in target.filters):
            target.addFilter(_TokenizerLengthWarning())


def log_effective_length(prompt, requested: int | None) -> None:
    if requested is not None and prompt.max_length < requested:
        log.warning("max_length %d lowered to %d: the model has %d positions and the prompt template takes %d "
                    "tokens (query + document budget = positions - template)", requested, prompt.max_length,
                    prompt.model_max_length, prompt.model_max_length - prompt.max_length)


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _retry_after(seconds: float | None) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds or 1)))}


# ----------------------------------------------------------------------------- app
def install_error_handlers(app: FastAPI, metrics) -> None:
    """Every refusal in one shape (error_body) and counted by kind: validation 422s, our
    ApiErrors, Starlette's 404 / 405, and anything unexpected as a logged 500."""
    def _error(status: int, message: str, kind: str, detail: Any = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        return JSONResponse(error_body(message, kind, detail), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = list(exc.errors())
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        return _error(422, validation_message(errors), "validation", detail)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.kind, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kinds = {404: "not_found", 405: "method_not_allowed"}
        what = {404: f"path: {request.url.path} is not an endpoint of this server (see /docs)",
                405: f"method: {request.method} is not allowed on {request.url.path}"}
        return _error(exc.status_code, what.get(exc.status_code, str(exc.detail)),
                      kinds.get(exc.status_code, "http"), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("request failed")
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", "internal")


def create_app(reranker, settings: ServerSettings | None = None) -> FastAPI:
    """The ASGI app serving `reranker` (a scoring.reranker.Reranker)."""
    settings = settings or ServerSettings()
    prompt: RerankPrompt = reranker.prompt
    _quiet_tokenizer_length_warning()
    log_effective_length(prompt, settings.requested_max_length)
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
        log.info("compiling %d batch shapes before /health turns ready", len(ladder.shapes))
        watcher = asyncio.create_task(_announce_ready())
        yield
        watcher.cancel()
        # uvicorn has answered (or, past --shutdown-timeout, cancelled) every request by now:
        # the worker ends after its current batch or shape.
        if not await run_in_threadpool(batcher.stop, settings.shutdown_timeout_s):
            log.warning("the batcher did not stop within %.0f s; exiting anyway", settings.shutdown_timeout_s)

    async def _announce_ready():
        await run_in_threadpool(batcher.settled.wait)
        if not batcher.ready.is_set():
            return
        metrics.mark_ready(len(ladder.shapes), batcher.warmup_seconds or 0.0)
        log.info("ready: %d batch shapes compiled in %.1f s; /health answers 200", len(ladder.shapes),
                    batcher.warmup_seconds or 0.0)

    app = FastAPI(title="prorank-jax rerank server", version=__version__, lifespan=lifespan,
                  description=SCORE_SEMANTICS, docs_url=None, redoc_url=None)
    app.add_middleware(RequestGuard, metrics=metrics, settings=GuardSettings(
        settings.max_request_bytes, settings.max_inflight_bytes, settings.body_timeout_s, KNOWN_ENDPOINTS,
        RERANK_ENDPOINTS))
    app.state.batcher, app.state.metrics, app.state.ladder = batcher, metrics, ladder

    install_error_handlers(app, metrics)

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
    def require_ready() -> None:
        if batcher.warmup_error is not None:
            raise ApiError(503, f"the server failed to start: {batcher.warmup_error}", "not_ready")
        if not batcher.ready.is_set():
            raise ApiError(503, f"the server is still compiling its batch shapes ({batcher.warmup_done} of "
                                f"{len(ladder.shapes)} done); retry when /health answers 200", "not_ready",
                           _retry_after(batcher.warmup_seconds_left()))

    def admit(tokens: int) -> None:
        queued = batcher.queued_tokens
        if queued and queued + tokens > settings.max_queued_tokens:
            wait = batcher.seconds_to_clear(tokens)
            raise ApiError(429, f"documents: {tokens} prompt tokens would take the queue past this server's limit of "
                                f"{settings.max_queued_tokens} tokens (--max-queued-tokens; {queued} queued); retry "
                                "later", "overloaded", _retry_after(wait))

    async def score(request: Request, query: str, documents: list[str], field: str, *,
                    instruction: str | None, max_tokens_per_doc: int | None = None,
                    allow_truncation: bool = True) -> Scored:
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
        tokens = sum(len(e) for e in encoded)
        admit(tokens)
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
        scored = Scored(raw=raw, tokens=tokens,
                        truncated_documents=sum(e.document_truncated for e in encoded),
                        truncated_queries=sum(e.query_truncated for e in encoded))
        metrics.pairs.inc(len(encoded))
        metrics.tokens.inc(scored.tokens)
        metrics.truncated_documents.inc(scored.truncated_documents)
        return scored

    def _truncation_headers(scored: Scored) -> dict[str, str]:
        return {"X-Truncated-Documents": str(scored.truncated_documents),
                "X-Truncated-Queries": str(scored.truncated_queries)}

    async def rerank(request: Request, api_version: str, document_as_string: bool = False):
        require_api_key(request)
        require_ready()
        raw_body = await request.body()
        body = await run_in_threadpool(parse_rerank_body, raw_body, request.headers.get("content-type"))
        del raw_body
        try:
            if isinstance(body, TeiRerankRequest):
                scored = await score(request, body.query, body.texts, "texts", instruction=body.instruction,
                                     allow_truncation=body.truncate)
                return JSONResponse(tei_response(body, scored, estimated_max), headers=_truncation_headers(scored))
            scored = await score(request, body.query, body.documents, "documents", instruction=body.instruction,
                                 max_tokens_per_doc=body.max_tokens_per_doc)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        payload = cohere_response(body, scored, settings.model_name, estimated_max, prompt.max_length, api_version,
                                  document_as_string=document_as_string)
        return JSONResponse(payload, headers=_truncation_headers(scored))

    def add_rerank_route(path: str, api_version: str, document_as_string: bool, summary: str) -> None:
        async def endpoint(request: Request):
            return await rerank(request, api_version, document_as_string)

        app.add_api_route(path, endpoint, methods=["POST"], summary=summary, name=f"rerank {path}",
                          openapi_extra=rerank_operation(document_as_string))

    for path, version in COHERE_ENDPOINTS.items():
        add_rerank_route(path, version, False, "Rerank: Cohere / Jina / vLLM body, or TEI's (texts)")
    for path in INFINITY_ENDPOINTS:
        add_rerank_route(path, "1", True, "Rerank for Infinity clients: documents come back as plain strings")

    # ------------------------------------------------------------------------- status
    @app.get("/health")
    async def health():
        if batcher.warmup_error is not None:
            return JSONResponse({"status": "failed", "error": str(batcher.warmup_error)}, status_code=503)
        if not batcher.ready.is_set():
            return JSONResponse({"status": "loading", "compiled_shapes": batcher.warmup_done,
                                 "total_shapes": len(ladder.shapes)}, status_code=503,
                                headers=_retry_after(batcher.warmup_seconds_left()))
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
            "requested_max_length": settings.requested_max_length,
            "max_total_length": prompt.max_total_length,
            "max_batch_tokens": settings.max_batch_tokens,
            "max_batch_rows": settings.max_batch_rows,
            "max_wait_ms": settings.max_wait_ms,
            "max_client_batch_size": settings.max_documents,
            "max_request_bytes": settings.max_request_bytes,
            "max_inflight_bytes": settings.max_inflight_bytes,
            "max_queued_tokens": settings.max_queued_tokens,
            "timeouts_s": {"header": settings.header_timeout_s, "body": settings.body_timeout_s,
                           "keep_alive": settings.keep_alive_timeout_s, "shutdown": settings.shutdown_timeout_s},
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

    install_docs(app)
    return app
