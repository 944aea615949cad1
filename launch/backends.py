"""Which JAX backends a `prorank` command starts: every one but the TPU's on a machine
without a TPU.

JAX starts every backend it knows on first use. With libtpu installed (requirements-tpu-aot.txt,
for `--compile-for`) that includes the TPU plugin, which on a CPU or GPU machine prints
libtpu's start-up complaints ("could not determine TPU accelerator type", an
INVALID_ARGUMENT error with a source-location trace) before JAX falls back to the other
backends. A new user reads that as a broken install.

So before a command imports its module, the CLI names the other backends JAX found in
JAX_PLATFORMS (e.g. "cpu", or "cuda,cpu" with the CUDA plugin), in JAX's own priority order,
so the same backend is the default as before. Nothing changes when:
  * JAX_PLATFORMS is already set (even to ""): the user chose;
  * this machine has a TPU (a TPU VM: its PCI devices, /dev/accel*, /dev/vfio/N, or the TPU
    variables a TPU set-up exports): JAX must start the TPU as it always does;
  * libtpu is not installed: there is nothing to quiet;
  * JAX's backends are already started (prorank called as a library, e.g. from tests).
`--compile-for` is not affected: it loads libtpu as a compiler through
jax.experimental.topologies, which does not go through JAX_PLATFORMS.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
from typing import Iterable, Mapping

logger = logging.getLogger("prorank")

# Variables a TPU VM (or a hand-configured TPU host) exports for libtpu; read, never set.
TPU_HOST_VARIABLES = ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID")
# Device files of TPU chips: /dev/accelN (v2-v4, v5p), /dev/vfio/N (v5e, v6e).
TPU_DEVICE_PATTERNS = ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def platforms_without_tpu(environ: Mapping[str, str], has_tpu: bool, libtpu_installed: bool,
                          platforms: Iterable[str]) -> str | None:
    """The JAX_PLATFORMS value that keeps JAX from starting the TPU plugin, or None to leave
    JAX's choice alone. `platforms`: the backends JAX knows, highest priority first."""
    if "JAX_PLATFORMS" in environ or has_tpu or not libtpu_installed:
        return None
    others = [p for p in platforms if p != "tpu"]
    return ",".join(others) if others else None


def machine_has_tpu(environ: Mapping[str, str] = os.environ) -> bool:
    """A TPU is attached to this machine (or the environment says it is a TPU host)."""
    if any(environ.get(name) for name in TPU_HOST_VARIABLES):
        return True
    if any(glob.glob(pattern) for pattern in TPU_DEVICE_PATTERNS):
        return True
    from jax._src import hardware_utils  # JAX's own check: Google TPU chips on the PCI bus

    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0


def known_platforms() -> list[str]:
    """The backends JAX would try at start (built-in and plugins, e.g. cuda), highest
    priority first; discovering the plugins starts none of them."""
    from jax._src import xla_bridge

    xla_bridge._discover_and_register_pjrt_plugins()
    factories = xla_bridge._backend_factories
    return sorted(factories, key=lambda name: -factories[name].priority)


def skip_tpu_probe() -> str | None:
    """Set JAX_PLATFORMS (environment and jax.config) to every backend but the TPU's where
    platforms_without_tpu says so; the value set, or None when nothing was changed."""
    libtpu_installed = importlib.util.find_spec("libtpu") is not None
    if "JAX_PLATFORMS" in os.environ or not libtpu_installed:
        return None  # decided without importing jax
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return None
    try:
        value = platforms_without_tpu(os.environ, machine_has_tpu(), libtpu_installed, known_platforms())
    except (AttributeError, ImportError) as err:  # JAX's internals moved: keep its own choice
        logger.debug("backends: leaving JAX_PLATFORMS unset (%s)", err)
        return None
    if value is not None:
        os.environ["JAX_PLATFORMS"] = value  # processes this command starts inherit it
        jax.config.update("jax_platforms", value)
        logger.debug("backends: JAX_PLATFORMS=%s (no TPU on this machine)", value)
    return value
