"""XLA_FLAGS for the subprocesses tests start: the session's flags (tests/conftest.py) with
the simulated CPU device count a test asks for."""

from __future__ import annotations

import os

# Set for the whole session by tests/conftest.py (why: its docstring).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
_DEVICE_COUNT = "--xla_force_host_platform_device_count"


def xla_flags(devices: int | None = None) -> str:
    """This session's XLA_FLAGS without any device count, plus `devices` simulated CPU devices
    (None: JAX's default of one)."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_COUNT)]
    if devices is not None:
        kept.append(f"{_DEVICE_COUNT}={devices}")
    return " ".join(kept)
