"""A jax.profiler trace of chosen training steps (loop.profile_steps: [first, last]).

The trace goes to <out_dir>/profile in the layout TensorBoard's profile plugin (XProf) and
Perfetto read: plugins/profile/<timestamp>/<host>.xplane.pb (+ .trace.json.gz). Every
process traces its own host; with several processes each writes under
profile/process_<i>, because processes sharing a host would write the same file name. Each step runs inside a StepTraceAnnotation("train",
step_num=...), so the plugin's step view splits the trace per step. The trace is stopped
only after the last traced step's device work has finished, so that work is in it.

jax writes a trace through its own file layer; for an out_dir that is not a local path
(gs://...) the trace is written to a local temporary folder and then copied file by file
through prorank_jax.paths, so the profile lands beside the run's other files either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import jax

from prorank_jax import paths

log = logging.getLogger(__name__)

FOLDER = "profile"


def is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path)


def profile_dir(out_dir: str | os.PathLike, process_index: int, process_count: int) -> paths.AnyPath:
    """Where a process's trace goes (each TensorBoard run folder of the plugin is one process)."""
    folder = paths.as_path(out_dir) / FOLDER
    return folder if process_count == 1 else folder / f"process_{process_index}"


class StepProfiler:
    """Starts a trace before step `first` runs and stops it after step `last` (loop step
    numbers as metrics.jsonl counts them: step s is the update that makes s updates done).
    A run resumed inside the window traces the steps it has left."""

    def __init__(self, out_dir: str | os.PathLike, steps: tuple[int, int] | None):
        self.first, self.last = steps if steps else (None, None)
        self.target = profile_dir(out_dir, jax.process_index(), jax.process_count())
        self._trace_dir: str | None = None
        self.done = False

    @property
    def active(self) -> bool:
        return self._trace_dir is not None

    def before_step(self, step: int) -> None:
        if self.first is None or self.active or self.done or not self.first <= step <= self.last:
            return
        trace_dir = str(self.target) if is_local(self.target) else tempfile.mkdtemp(prefix="prorank-profile-")
        try:
            jax.profiler.start_trace(trace_dir)
        except RuntimeError as err:  # another trace is running (started by the user): keep training
            log.warning("loop.profile_steps: could not start a trace (%s); no profile is written", err)
            self.done = True
            return
        self._trace_dir = trace_dir
        log.info("profiling steps %d..%d into %s", step, self.last, self.target)

    def annotate(self, step: int):
        """The context a step runs in: a StepTraceAnnotation while tracing."""
        if not self.active:
            return contextlib.nullcontext()
        return jax.profiler.StepTraceAnnotation("train", step_num=step)

    def after_step(self, step: int, outputs=None) -> None:
        if self.active and step >= self.last:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        """Stop a running trace (the loop's end, early or not) and put it in place."""
        if not self.active:
            return
        trace_dir, self._trace_dir = self._trace_dir, None
        self.done = True
        jax.profiler.stop_trace()
        if not is_local(self.target):
            copy_tree(trace_dir, self.target)
            shutil.rmtree(trace_dir, ignore_errors=True)
        log.info("profile written to %s", self.target)


def copy_tree(local_dir: str, target: paths.AnyPath) -> None:
    """Every file under local_dir to the same relative path under target (a gs:// folder too)."""
    for root, _, files in os.walk(local_dir):
        for name in files:
            source = os.path.join(root, name)
            dest = target / os.path.relpath(source, local_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(Path(source).read_bytes())
