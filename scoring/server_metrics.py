"""Prometheus metrics of the rerank server, and a process-wide count of XLA compilations.

Every metric lives in the server's own CollectorRegistry (two apps in one process do not
collide). Compilations are counted from JAX's backend-compile events, so a compile that a
request triggered shows up even if it came from a code path the server does not know.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from scoring.dynamic_batcher import BatchObserver

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
TOKEN_BUCKETS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Backend compilations in this process (one listener, registered on first use)."""

    _lock = threading.Lock()
    _count = 0
    _registered = False

    @classmethod
    def ensure_registered(cls) -> None:
        with cls._lock:
            if cls._registered:
                return
            import jax

            jax.monitoring.register_event_duration_secs_listener(cls._on_event)
            cls._registered = True

    @classmethod
    def _on_event(cls, event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            with cls._lock:
                cls._count += 1

    @classmethod
    def count(cls) -> int:
        return cls._count


class _CompileCollector:
    """prorank_compiles_total{phase="startup"|"serving"}: serving should stay at 0."""

    def __init__(self, metrics: "ServerMetrics"):
        self.metrics = metrics

    def collect(self):
        family = CounterMetricFamily(
            "prorank_compiles", "XLA compilations: during start-up (warm-up) and while serving", labels=["phase"]
        )
        startup, serving = self.metrics.compiles()
        family.add_metric(["startup"], startup)
        family.add_metric(["serving"], serving)
        yield family


class ServerMetrics(BatchObserver):
    def __init__(self, pending_jobs=lambda: 0):
        CompileCounter.ensure_registered()
        self._compiles_at_start = CompileCounter.count()
        self._compiles_at_ready: int | None = None
        r = self.registry = CollectorRegistry()
        self.requests = Counter("prorank_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.request_seconds = Histogram("prorank_request_seconds", "HTTP request latency by endpoint",
                                         ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("prorank_errors", "failed requests by kind (json, validation, "
                              "unsupported_media_type, too_large, timeout, unauthorized, overloaded, not_ready, "
                              "not_found, method_not_allowed, internal)", ["kind"], registry=r)
        self.pairs = Counter("prorank_pairs", "(query, document) pairs scored", registry=r)
        self.tokens = Counter("prorank_tokens", "prompt tokens scored (without padding)", registry=r)
        self.truncated_documents = Counter("prorank_truncated_documents",
                                           "documents cut by the length budget", registry=r)
        self.queue_seconds = Histogram("prorank_queue_seconds", "time a request waited for its batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_pairs = Histogram("prorank_batch_pairs", "real pairs per batch", buckets=SIZE_BUCKETS, registry=r)
        self.batch_requests = Histogram("prorank_batch_requests", "requests whose pairs share a batch",
                                        buckets=REQUEST_BUCKETS, registry=r)
        self.batch_padded_tokens = Histogram("prorank_batch_padded_tokens", "rows x length of each batch",
                                             buckets=TOKEN_BUCKETS, registry=r)
        self.batch_seconds = Histogram("prorank_batch_seconds", "wall time of a batch, dispatch to scores",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.merged_batches = Counter("prorank_merged_batches", "batches holding pairs of two or more requests",
                                      registry=r)
        self.dropped_requests = Counter("prorank_dropped_requests",
                               "requests skipped because their client left before they were batched", registry=r)
        self.disconnects = Counter("prorank_client_disconnects", "clients that left before their answer",
                                   registry=r)
        self.in_flight = Gauge("prorank_requests_in_flight", "rerank requests being answered", registry=r)
        self.ready = Gauge("prorank_ready", "1 once every batch shape is compiled", registry=r)
        self.warmup_seconds = Gauge("prorank_warmup_seconds", "seconds spent compiling the batch shapes", registry=r)
        self.compiled_shapes = Gauge("prorank_compiled_shapes", "batch shapes compiled at start-up", registry=r)
        self.queue_depth = Gauge("prorank_queue_requests", "requests waiting for the batcher", registry=r)
        self.queue_depth.set_function(pending_jobs)
        r.register(_CompileCollector(self))

    def mark_ready(self, shapes: int, seconds: float) -> None:
        self._compiles_at_ready = CompileCounter.count()
        self.compiled_shapes.set(shapes)
        self.warmup_seconds.set(seconds)
        self.ready.set(1)

    def compiles(self) -> tuple[int, int]:
        now = CompileCounter.count()
        if self._compiles_at_ready is None:
            return now - self._compiles_at_start, 0
        return self._compiles_at_ready - self._compiles_at_start, now - self._compiles_at_ready

    # ------------------------------------------------------------------------- BatchObserver
    def queued(self, seconds: float) -> None:
        self.queue_seconds.observe(seconds)

    def batch(self, pairs: int, requests: int, rows: int, length: int, seconds: float) -> None:
        self.batch_pairs.observe(pairs)
        self.batch_requests.observe(requests)
        self.batch_padded_tokens.observe(rows * length)
        self.batch_seconds.observe(seconds)
        if requests > 1:
            self.merged_batches.inc()

    def dropped(self) -> None:
        self.dropped_requests.inc()
