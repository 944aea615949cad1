"""The serving batcher: pairs of concurrent requests merged into fixed-shape batches.

Requests arrive already tokenized (a list of prompt ids each). One worker thread owns the
model: it takes the first waiting request, keeps taking more until their tokens reach
`max_batch_tokens` or `max_wait_s` has passed since the first one arrived, cuts all their
pairs into batches together (`plan_token_batches`) and hands every request its own scores.

Shapes. A batch is `rows` x `length` left-padded ids, with `length` a bucket of the
Reranker's `length_buckets` and `rows` a `row_sizes` count, and rows * length never above
the token budget. `serving_ladder` lists every such shape the server can meet: lengths
from the shortest possible prompt (the template plus one query and one document token) to
the longest, and for each length the row counts up to min(max_rows, budget // length).
The worker compiles all of them ahead of time (`warm_up`, lowered and compiled without
running them), so no request waits on a compile.

A request whose client has gone is dropped before its pairs are planned; once planned,
its pairs run with the others and its scores are discarded. Either way the other
requests of that round get exactly their own scores.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from prorank_jax.prompts import smallest_bucket_for
from scoring.batching import Batch, batch_arrays, length_buckets, row_sizes, rows_for

log = logging.getLogger(__name__)

# Smallest prompt the template allows: at least one query token and the separator before
# the (possibly empty) document piece.
MIN_VARIABLE_TOKENS = 2


@dataclass(frozen=True)
class ServingLadder:
    """Every (rows, length) batch shape the server runs."""

    lengths: tuple[int, ...]
    max_rows_by_length: dict[int, int]

    def max_rows(self, length: int) -> int:
        return self.max_rows_by_length[length]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(rows, length) for length in self.lengths for rows in row_sizes(self.max_rows(length))]


def serving_ladder(
    min_prompt_length: int, max_total_length: int, max_batch_tokens: int, max_rows: int, steps_per_octave: int
) -> ServingLadder:
    """The shapes for prompts of min_prompt_length..max_total_length tokens (see the module docstring)."""
    buckets = length_buckets(max_total_length, steps_per_octave)
    if max_batch_tokens < buckets[-1]:
        raise ValueError(
            f"max_batch_tokens={max_batch_tokens} is below the longest padded prompt ({buckets[-1]} tokens for "
            f"max_length + template); raise it or lower max_length"
        )
    lengths = tuple(b for b in buckets if b >= smallest_bucket_for(min(min_prompt_length, max_total_length), buckets))
    return ServingLadder(lengths, {length: max(1, min(max_rows, max_batch_tokens // length)) for length in lengths})


def plan_token_batches(lengths: Sequence[int], ladder: ServingLadder) -> list[Batch]:
    """Pairs sorted by length, longest first, cut into ladder shapes: each batch is padded to
    the bucket of its longest pair and holds as many pairs as that bucket allows."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        length = smallest_bucket_for(int(lengths[order[start]]), ladder.lengths)
        cap = ladder.max_rows(length)
        idx = order[start : start + cap]
        batches.append(Batch(indices=idx, rows=rows_for(len(idx), cap), length=length))
        start += len(idx)
    return batches


@dataclass(eq=False)
class Job:
    """One request's prompts; `deliver` is called once, from the worker, with its float32
    scores or the exception that stopped them."""

    sequences: Sequence[Sequence[int]]
    deliver: Callable[[np.ndarray | BaseException], None]
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    def cancel(self) -> None:
        """The client has gone: skip it if it has not been planned yet."""
        self.cancelled = True


class BatchObserver:
    """What the worker reports (the server's metrics implement it); no-ops by default."""

    def queued(self, seconds: float) -> None: ...

    def batch(self, pairs: int, requests: int, rows: int, length: int, seconds: float) -> None: ...

    def dropped(self) -> None: ...


_STOP = object()


class DynamicBatcher:
    """Merges concurrent jobs into ladder batches on one worker thread (see the module docstring).

    run_batch(ids, mask) -> scores [rows] runs one padded batch; compile(rows, length)
    compiles that shape ahead of time. Both are called on the worker thread only.
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray, np.ndarray], np.ndarray],
        compile_shape: Callable[[int, int], None],
        ladder: ServingLadder,
        pad_id: int,
        max_batch_tokens: int,
        max_wait_s: float,
        observer: BatchObserver | None = None,
    ):
        self.run_batch = run_batch
        self.compile_shape = compile_shape
        self.ladder = ladder
        self.pad_id = pad_id
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.observer = observer or BatchObserver()
        self.ready = threading.Event()  # every shape compiled
        self.settled = threading.Event()  # warm-up over, compiled or failed
        self.warmup_seconds: float | None = None
        self.warmup_error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._work, name="prorank-batcher", daemon=True)

    # ------------------------------------------------------------------------- control
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> Job:
        self._queue.put(job)
        return job

    def stop(self, timeout: float | None = None) -> None:
        """Finish every job already submitted, then end the worker (a warm-up in progress
        stops after its current shape)."""
        self._stopping.set()
        self._queue.put(_STOP)
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------------- worker
    def _work(self) -> None:
        try:
            self._warm_up()
        except BaseException as err:  # reported by /health; the worker still answers jobs with it
            log.exception("warm-up failed")
            self.warmup_error = err
        finally:
            self.settled.set()
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs, stopping = self._gather(first)
            if self.warmup_error is not None:
                for job in jobs:
                    job.deliver(RuntimeError(f"the server failed to start: {self.warmup_error}"))
                continue
            self._run_round(jobs)

    def _warm_up(self) -> None:
        start = time.perf_counter()
        shapes = self.ladder.shapes
        for i, (rows, length) in enumerate(shapes):
            if self._stopping.is_set():
                raise RuntimeError(f"stopped during warm-up after {i} of {len(shapes)} shapes")
            self.compile_shape(rows, length)
            log.debug("compiled %d/%d: %d x %d", i + 1, len(shapes), rows, length)
        self.warmup_seconds = time.perf_counter() - start
        log.info("compiled %d batch shapes in %.1f s", len(shapes), self.warmup_seconds)
        self.ready.set()

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """The first job and those that join it within the wait and the token budget."""
        jobs, tokens = [first], first.tokens
        deadline = first.enqueued + self.max_wait_s
        while tokens < self.max_batch_tokens:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
            tokens += job.tokens
        return jobs, False

    def _run_round(self, jobs: list[Job]) -> None:
        live = []
        for job in jobs:
            if job.cancelled:
                self.observer.dropped()
            else:
                live.append(job)
        if not live:
            return
        now = time.monotonic()
        for job in live:
            self.observer.queued(now - job.enqueued)
        sequences = [seq for job in live for seq in job.sequences]
        owner = np.concatenate([np.full(len(job.sequences), j) for j, job in enumerate(live)])
        scores = np.zeros(len(sequences), np.float32)
        try:
            batches = plan_token_batches([len(s) for s in sequences], self.ladder)
            pending = None  # one batch in flight while the next is padded
            for batch in batches:
                ids, mask = batch_arrays(sequences, batch, self.pad_id)
                started = time.perf_counter()
                out = self.run_batch(ids, mask)
                if pending is not None:
                    self._collect(scores, owner, *pending)
                pending = (batch, out, started)
            if pending is not None:
                self._collect(scores, owner, *pending)
        except Exception as err:  # a failed round fails its requests, never the server
            log.exception("batch failed")
            for job in live:
                job.deliver(err)
            return
        offset = 0
        for job in live:
            values = scores[offset : offset + len(job.sequences)]
            offset += len(job.sequences)
            if np.all(np.isfinite(values)):
                job.deliver(values.copy())
            else:
                job.deliver(FloatingPointError("non-finite scores (check the weights / dtype)"))

    def _collect(self, scores: np.ndarray, owner: np.ndarray, batch: Batch, out, started: float) -> None:
        scores[batch.indices] = np.asarray(out, dtype=np.float32)[: len(batch.indices)]
        self.observer.batch(
            pairs=len(batch.indices),
            requests=len(np.unique(owner[batch.indices])),
            rows=batch.rows,
            length=batch.length,
            seconds=time.perf_counter() - started,
        )
