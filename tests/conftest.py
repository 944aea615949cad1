"""One JAX compilation cache for the whole test session, and XLA's CPU code generation at -O0.

Many tests compile the same programs of the tiny model again: in other test files on the
other xdist worker, and in the subprocesses that training, resume, multi-process and
notebook tests start. A persistent cache in a fresh folder per session (set here, before
anything imports jax, and inherited by workers and subprocesses through the environment)
lets each program compile once; on tests/launch/test_resume.py alone it cut the CPU time
from 318 s to 146 s. The cache changes no result: it stores XLA's executables keyed by
the program, the compile options and the jax/jaxlib versions. Set JAX_COMPILATION_CACHE_DIR
yourself to keep a cache between sessions.

The tests' models are tiny, so compiling dominates their time, and most of a CPU compile
is LLVM optimising the generated code. --xla_backend_optimization_level=0 (added to
XLA_FLAGS here, inherited the same way; tests.helpers.env.xla_flags keeps it for
subprocesses that set their own device count) cut the CPU time of
tests/rl/test_train_step.py from 62 s to 36 s. It changes how XLA's HLO is turned into
machine code, not the HLO: `prorank demo` printed the same table to the last digit and the
same stage-1 metrics with and without it (2026-11-30). Matmuls run in the same library
kernels either way.
"""

import os
import shutil
import tempfile

_OWN_CACHE = "PRORANK_TEST_OWNS_JAX_CACHE"

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="prorank-test-jax-cache-")
    os.environ[_OWN_CACHE] = str(os.getpid())
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from tests.helpers.env import TEST_XLA_FLAGS  # noqa: E402  (stdlib only: no jax yet)

if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()


def pytest_unconfigure(config):
    # Only the process that made the folder removes it (the xdist controller, or a plain run).
    if os.environ.get(_OWN_CACHE) == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
