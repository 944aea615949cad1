"""One JAX compilation cache for the whole test session.

Many tests compile the same programs of the tiny model again: in other test files on the
other xdist worker, and in the subprocesses that training, resume, multi-process and
notebook tests start. A persistent cache in a fresh folder per session (set here, before
anything imports jax, and inherited by workers and subprocesses through the environment)
lets each program compile once; on tests/launch/test_resume.py alone it cut the CPU time
from 318 s to 146 s. The cache changes no result: it stores XLA's executables keyed by
the program, the compile options and the jax/jaxlib versions. Set JAX_COMPILATION_CACHE_DIR
yourself to keep a cache between sessions.
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


def pytest_unconfigure(config):
    # Only the process that made the folder removes it (the xdist controller, or a plain run).
    if os.environ.get(_OWN_CACHE) == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
