"""Preemption: SIGTERM caught as a flag, and a stop decision every process agrees on.

Cloud TPU VMs (and most schedulers) announce preemption with SIGTERM and kill the
process some seconds later. ``preemption_guard()`` turns the signal into a flag; the
training loop polls ``stop_requested()`` once per step, saves the current step and
stops. On multi-process runs ``stop_requested`` combines every process's flag, so all
of them stop and save at the same step even when the signal reached only some of them.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

# The agreement stop_requested uses; sync_processes is re-exported for older callers.
from prorank_jax.multihost import any_process, sync_processes  # noqa: F401

log = logging.getLogger(__name__)


class _Preemption:
    # A plain attribute, not a threading.Event: Event.set takes a lock, and a handler
    # that interrupts the main thread while it holds that lock would deadlock.
    requested = False


def _on_signal(signum, frame) -> None:
    # Only a flag: orbax, jax and logging are not safe to call from a signal handler.
    _Preemption.requested = True


def preemption_requested() -> bool:
    """True once a SIGTERM arrived at this process under preemption_guard /
    install_preemption_handler. Per process; a loop should poll stop_requested()."""
    return _Preemption.requested


def stop_requested() -> bool:
    """Whether to save and stop at this step, agreed by every process.

    The signal may reach only some hosts, or reach them during different steps; each
    deciding alone would save different steps or leave the others waiting in a
    collective save. Every process must call this once per step. On several processes
    the gather waits for the step's device work, so the host stops running a step
    ahead; the GRPO loop waits each step anyway (rewards are computed on the host), and
    for stage 2 this costs the dispatch of one step, small beside a 0.5B model's step.
    """
    return any_process(preemption_requested())


def install_preemption_handler(signals: tuple[int, ...] = (signal.SIGTERM,)):
    """Catch SIGTERM as a flag; returns a function that restores the previous handlers.

    Must be called from the main thread (Python delivers signals only there).
    """
    _Preemption.requested = False
    previous = {sig: signal.signal(sig, _on_signal) for sig in signals}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


@contextlib.contextmanager
def preemption_guard(signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """Within the block SIGTERM sets preemption_requested() instead of killing the process.

    Outside the main thread signals cannot be caught; the block then runs unguarded
    (with a warning) rather than failing.
    """
    if threading.current_thread() is not threading.main_thread():
        log.warning("preemption_guard outside the main thread: SIGTERM will not be caught")
        yield
        return
    restore = install_preemption_handler(signals)
    try:
        yield
    finally:
        restore()
