"""The serving batcher: pairs of concurrent requests merged into fixed-shape batches.

Requests arrive already tokenized (a list of prompt ids each). One worker thread owns the
model and keeps a list of active requests in arrival order. Each batch is planned anew from
all of them (`plan_fair_batch`): pairs are taken round-robin, one per request in turn, each
request's longest pairs first, until the batch's shape is full. So a 2-document request
that arrives behind a 1,000-document one rides in the next batch instead of waiting for the
whole large request, and with more concurrent requests each batch fills to the token budget.
While the requests at hand fill less than one budget, the worker waits up to `max_wait_s`
after the oldest arrived for company. A request is answered once all its pairs are scored.

Shapes. A batch is `rows` x `length` left-padded ids, with `length` a bucket of the
Reranker's `length_buckets` and `rows` a `row_sizes` count, and rows * length never above
the token budget. `serving_ladder` lists every such shape the server can meet: lengths
from the shortest possible prompt (the template plus one query and one document token) to
the longest, and for each length the row counts up to min(max_rows, budget // length).
The worker compiles all of them ahead of time (`warm_up`, lowered and compiled without
running them), so no request waits on a compile.

A request whose client has gone is dropped before its next pair is planned: only pairs
already in a running batch are computed for it. The other requests get exactly their own
scores either way.
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
# Most of a batch's rows left to filler before its last pairs wait for the next batch
# (plan_fair_batch). On the bundled model (2-core CPU, 256 tokens) a 32-row batch ran 514
# pairs/s, 16 rows 495 and 8 rows 423: 20 pairs in 32 rows score at 20/32 of 514, 321 pairs/s,
# 16 + 4 rows at ~480. Below a quarter of filler rows the extra batch is not worth it.
MAX_FILLER_FRACTION = 0.25


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


def plan_fair_batch(remaining: Sequence[Sequence[int]], ladder: ServingLadder) -> tuple[list[int], int, int]:
    """One batch from several requests' pending pairs (each request's lengths in the order it
    will run them): (pairs taken from each request, rows, length).

    Round-robin, one pair per request in turn, oldest request first, while the batch's shape
    (the bucket of its longest pair, and that bucket's row cap) has room. A pair that would
    lengthen the batch past what its rows allow ends that request's turn for this batch.
    The oldest request always gets at least one pair, so every batch makes progress.

    The batch then grows with the load: when the pairs at hand would leave more than
    MAX_FILLER_FRACTION of its rows to filler (a lone 20-document request in 32 rows), the
    last pairs taken go back to the next batch, down to the largest row count they fill
    (16 now, 4 next). Under load the pairs fill the largest shape and nothing goes back."""
    taken = [0] * len(remaining)
    order: list[int] = []  # the request of each pair taken, in turn
    longest = 0
    progressing = True
    while progressing:
        progressing = False
        for j, lengths in enumerate(remaining):
            if taken[j] >= len(lengths):
                continue
            new_longest = max(longest, int(lengths[taken[j]]))
            length = smallest_bucket_for(new_longest, ladder.lengths)
            if order and len(order) + 1 > ladder.max_rows(length):
                continue
            taken[j] += 1
            order.append(j)
            longest = new_longest
            progressing = True
    rows = rows_for(len(order), ladder.max_rows(smallest_bucket_for(longest, ladder.lengths)))
    if rows - len(order) > MAX_FILLER_FRACTION * rows:
        for j in order[filled_rows(len(order)):]:
            taken[j] -= 1
        order = order[: filled_rows(len(order))]
        longest = max(int(max(remaining[j][:n])) for j, n in enumerate(taken) if n)
    length = smallest_bucket_for(longest, ladder.lengths)
    return taken, rows_for(len(order), ladder.max_rows(length)), length


def filled_rows(count: int) -> int:
    """The largest power-of-two row count that `count` pairs fill."""
    return 1 << (count.bit_length() - 1)


@dataclass(eq=False)
class Job:
    """One request's prompts; `deliver` is called once, from the worker, with its float32
    scores or the exception that stopped them."""

    sequences: Sequence[Sequence[int]]
    deliver: Callable[[np.ndarray | BaseException], None]
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    # Worker-owned progress: pair indices longest first, how many are planned and scored.
    order: np.ndarray | None = None
    planned: int = 0
    scored: int = 0
    scores: np.ndarray | None = None

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    def cancel(self) -> None:
        """The client has gone: plan none of its remaining pairs."""
        self.cancelled = True

    def _prepare(self) -> None:
        lengths = np.fromiter((len(s) for s in self.sequences), np.int64, len(self.sequences))
        self.order = np.argsort(-lengths, kind="stable")
        self.scores = np.zeros(len(self.sequences), np.float32)

    def _pending_lengths(self) -> list[int]:
        return [len(self.sequences[i]) for i in self.order[self.planned:]]


class BatchObserver:
    """What the worker reports (the server's metrics implement it); no-ops by default."""

    def queued(self, seconds: float) -> None: ...

    def batch(self, pairs: int, requests: int, rows: int, length: int, seconds: float) -> None: ...

    def dropped(self) -> None: ...


class WarmupStopped(Exception):
    """The server was stopped before every shape was compiled (not a failure)."""


_STOP = object()
PROGRESS_EVERY_S = 5.0


class DynamicBatcher:
    """Merges concurrent jobs into ladder batches on one worker thread (see the module docstring).

    run_batch(ids, mask) -> scores [rows] runs one padded batch (it may return before the
    scores are computed, as jax does; np.asarray waits); compile(rows, length) compiles that
    shape ahead of time. Both are called on the worker thread only.
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
        self.warmup_done = 0
        self.warmup_started: float | None = None
        self._queue: queue.Queue = queue.Queue()
        self._active: list[Job] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._queued_tokens = 0
        self._tokens_per_s: float | None = None
        self._thread = threading.Thread(target=self._work, name="prorank-batcher", daemon=True)

    # ------------------------------------------------------------------------- control
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> Job:
        with self._lock:
            self._queued_tokens += job.tokens
        self._queue.put(job)
        return job

    def stop(self, timeout: float | None = None) -> bool:
        """End the worker after its current batch or shape; jobs still waiting are failed (by
        then the server has answered every client it still had). True if the worker ended."""
        self._stopping.set()
        self._queue.put(_STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def pending(self) -> int:
        """Requests submitted and not yet answered."""
        return self._queue.qsize() + len(self._active)

    @property
    def queued_tokens(self) -> int:
        """Prompt tokens submitted and not yet scored."""
        return self._queued_tokens

    def seconds_to_clear(self, extra_tokens: int = 0) -> float | None:
        """How long the tokens now queued (plus extra) take at the measured rate; None before
        any batch has run."""
        rate = self._tokens_per_s
        return None if rate is None else (self._queued_tokens + extra_tokens) / rate

    def warmup_seconds_left(self) -> float | None:
        """Estimated seconds until every shape is compiled, from the mean compile so far."""
        total = len(self.ladder.shapes)
        if self.warmup_started is None or self.warmup_done == 0:
            return None
        per_shape = (time.perf_counter() - self.warmup_started) / self.warmup_done
        return per_shape * (total - self.warmup_done)

    # ------------------------------------------------------------------------- worker
    def _work(self) -> None:
        try:
            self._warm_up()
        except WarmupStopped as stopped:
            log.info("%s", stopped)
            self.warmup_error = stopped
        except BaseException as err:  # reported by /health; the worker still answers jobs with it
            log.exception("warm-up failed")
            self.warmup_error = err
        finally:
            self.settled.set()
        while True:
            if not self._active:
                job = self._queue.get()
                if job is _STOP:
                    break
                self._admit(job)
            if not self._take_arrivals(wait=self._wait_for_company()):
                break
            if self.warmup_error is not None:
                self._fail_all(RuntimeError(f"the server failed to start: {self.warmup_error}"))
                continue
            self._run_batches()
        self._fail_all(RuntimeError("the server is stopping"))

    def _warm_up(self) -> None:
        self.warmup_started = start = time.perf_counter()
        shapes = self.ladder.shapes
        last_report = start
        for i, (rows, length) in enumerate(shapes):
            if self._stopping.is_set():
                raise WarmupStopped(f"stopped during warm-up after compiling {i} of {len(shapes)} batch shapes")
            self.compile_shape(rows, length)
            self.warmup_done = i + 1
            now = time.perf_counter()
            # Progress for a person watching start-up: the first shape, then every few seconds, and the last.
            if i == 0 or i + 1 == len(shapes) or now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                log.info("compiled %d/%d batch shapes (%.1f s)", i + 1, len(shapes), now - start)
        self.warmup_seconds = time.perf_counter() - start
        self.ready.set()

    def _admit(self, job: Job) -> None:
        job._prepare()
        self._active.append(job)

    def _wait_for_company(self) -> float:
        """Seconds to wait for more requests: while the active ones fill less than one token
        budget, until max_wait_s after the oldest arrived."""
        if sum(j.tokens for j in self._active) >= self.max_batch_tokens:
            return 0.0
        oldest = min(j.enqueued for j in self._active)
        return max(0.0, oldest + self.max_wait_s - time.monotonic())

    def _take_arrivals(self, wait: float) -> bool:
        """Move submitted jobs to the active list (waiting up to `wait` s for the first);
        False once stop() was called."""
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return True
            if job is _STOP:
                return False
            self._admit(job)
            if wait and sum(j.tokens for j in self._active) >= self.max_batch_tokens:
                wait, deadline = 0.0, time.monotonic()

    def _drop_cancelled(self) -> None:
        live = []
        for job in self._active:
            if job.cancelled:
                self.observer.dropped()
                self._release(sum(len(job.sequences[i]) for i in job.order[job.planned:]))
            else:
                live.append(job)
        self._active = live

    def _release(self, tokens: int) -> None:
        with self._lock:
            self._queued_tokens = max(0, self._queued_tokens - tokens)

    def _run_batches(self) -> None:
        """Batches until every active job is planned; new arrivals join between batches.
        One batch is in flight while the next is planned and padded."""
        pending = None
        while True:
            self._drop_cancelled()
            waiting = [j for j in self._active if j.planned < len(j.sequences)]
            if not waiting:
                break
            planned = self._plan(waiting)
            started = time.perf_counter()
            try:
                out = self.run_batch(*planned[1])
            except Exception as err:  # a failed batch fails its requests, never the server
                log.exception("batch failed")
                self._fail([job for job, _ in planned[0]], err)
                continue
            if pending is not None:
                self._collect(*pending)
            pending = (planned, out, started)
            if not self._take_arrivals(wait=0.0):
                self._queue.put(_STOP)  # seen again by the main loop once this round is collected
                break
        if pending is not None:
            self._collect(*pending)

    def _plan(self, waiting: list[Job]):
        taken, rows, length = plan_fair_batch([j._pending_lengths() for j in waiting], self.ladder)
        parts, sequences = [], []
        now = time.monotonic()
        for job, n in zip(waiting, taken):
            if not n:
                continue
            if job.planned == 0:
                self.observer.queued(now - job.enqueued)
            idx = job.order[job.planned : job.planned + n]
            job.planned += n
            parts.append((job, idx))
            sequences.extend(job.sequences[i] for i in idx)
        batch = Batch(indices=np.arange(len(sequences)), rows=rows, length=length)
        return parts, batch_arrays(sequences, batch, self.pad_id), batch

    def _collect(self, planned, out, started: float) -> None:
        parts, _, batch = planned
        try:
            values = np.asarray(out, dtype=np.float32)
        except Exception as err:
            log.exception("batch failed")
            self._fail([job for job, _ in parts], err)
            return
        seconds = time.perf_counter() - started
        offset, tokens = 0, 0
        for job, idx in parts:
            job.scores[idx] = values[offset : offset + len(idx)]
            offset += len(idx)
            job.scored += len(idx)
            tokens += sum(len(job.sequences[i]) for i in idx)
        self._release(tokens)
        rate = tokens / max(seconds, 1e-6)
        self._tokens_per_s = rate if self._tokens_per_s is None else 0.8 * self._tokens_per_s + 0.2 * rate
        self.observer.batch(pairs=offset, requests=len(parts), rows=batch.rows, length=batch.length, seconds=seconds)
        for job, _ in parts:
            if job.scored == len(job.sequences) and job in self._active:
                self._active.remove(job)
                if np.all(np.isfinite(job.scores)):
                    job.deliver(job.scores)
                else:
                    job.deliver(FloatingPointError("non-finite scores (check the weights / dtype)"))

    def _fail(self, jobs: list[Job], err: BaseException) -> None:
        for job in jobs:
            if job in self._active:
                self._active.remove(job)
                self._release(sum(len(job.sequences[i]) for i in job.order[job.scored:]))
                job.deliver(err)

    def _fail_all(self, err: BaseException) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                self._admit(job)
        self._fail(list(self._active), err)
