"""The rerank server's outermost ASGI layer: what is refused before the app sees a body.

* a body over --max-request-bytes: 413 (by Content-Length before reading, else while reading);
* a body that does not arrive within --body-timeout seconds of the headers: 408, and the
  connection is closed (a client that sends headers and then trickles or stalls);
* a body that would take the bytes of all bodies being read or answered past
  --max-inflight-bytes: 429 with Retry-After, so that memory stays bounded under load;
* a client that leaves while sending its body: nothing is run for it.
It also counts requests and latency per endpoint for /metrics. The body is read here and
replayed to the app; later receive() calls reach the server, so a handler still sees a
disconnect.
"""

from __future__ import annotations

import asyncio
import json
import time

from scoring.server_api import error_body
from scoring.server_metrics import ServerMetrics

OVERLOAD_RETRY_AFTER_S = 1


class BodyTooLarge(Exception):
    pass


class GuardSettings:
    def __init__(self, max_request_bytes: int, max_inflight_bytes: int, body_timeout_s: float,
                 known_endpoints: tuple[str, ...], rerank_endpoints: tuple[str, ...]):
        self.max_request_bytes, self.max_inflight_bytes = max_request_bytes, max_inflight_bytes
        self.body_timeout_s = body_timeout_s
        self.known_endpoints, self.rerank_endpoints = known_endpoints, rerank_endpoints


class RequestGuard:
    def __init__(self, app, metrics: ServerMetrics, settings: GuardSettings):
        self.app, self.metrics, self.settings = app, metrics, settings
        self.inflight_bytes = 0  # touched on the event loop only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        s = self.settings
        endpoint = scope["path"] if scope["path"] in s.known_endpoints else "other"
        started, status = time.perf_counter(), [500]
        rerank = endpoint in s.rerank_endpoints
        if rerank:
            self.metrics.in_flight.inc()

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        held = 0
        try:
            declared = _content_length(scope)
            if declared is not None and declared > s.max_request_bytes:
                return await self._refuse(send_status, 413, self._too_large_message(), "too_large")
            held = declared or 0
            if held and self.inflight_bytes + held > s.max_inflight_bytes:
                held = 0
                return await self._refuse(send_status, 429, self._overloaded_message(), "overloaded",
                                          [(b"retry-after", str(OVERLOAD_RETRY_AFTER_S).encode())])
            self.inflight_bytes += held
            try:
                body = await asyncio.wait_for(self._read_body(receive), timeout=s.body_timeout_s)
            except BodyTooLarge:
                return await self._refuse(send_status, 413, self._too_large_message(), "too_large")
            except asyncio.TimeoutError:
                message = (f"body: not received within {s.body_timeout_s:g} s of the headers (--body-timeout); "
                           "the connection is closed")
                return await self._refuse(send_status, 408, message, "timeout")
            if body is None:  # the client left mid-body: nobody to answer
                status[0] = 499
                return
            if len(body) > held:  # chunked, or a short Content-Length: count what arrived
                self.inflight_bytes += len(body) - held
                held = len(body)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_status)
        finally:
            self.inflight_bytes -= held
            if rerank:
                self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)

    async def _read_body(self, receive) -> bytes | None:
        """The whole body; None if the client disconnected first."""
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.settings.max_request_bytes:
                raise BodyTooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large_message(self) -> str:
        return (f"body: request body exceeds this server's limit of {self.settings.max_request_bytes} bytes "
                "(--max-request-bytes)")

    def _overloaded_message(self) -> str:
        return (f"body: the server is already reading or answering {self.inflight_bytes} bytes of requests, its "
                f"limit is {self.settings.max_inflight_bytes} (--max-inflight-bytes); retry after "
                f"{OVERLOAD_RETRY_AFTER_S} s")

    async def _refuse(self, send, status: int, message: str, kind: str, headers: list | None = None) -> None:
        self.metrics.errors.labels(kind).inc()
        payload = json.dumps(error_body(message, kind)).encode()
        # The body may be partly unread: close the connection rather than parse what follows as a request.
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(payload)).encode()), *(headers or [])]})
        await send({"type": "http.response.body", "body": payload})


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None
