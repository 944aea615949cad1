"""Model FLOP utilisation (MFU): how much of the hardware's peak a training step uses.

MFU = model FLOPs of a step / (step time x peak FLOP/s of the devices that ran it).

Model FLOPs count what the model needs, not what the compiled program happens to do
(rematerialisation, padding waste and sampling do not raise it): 6 FLOPs per matmul
weight per token for one training update (2 forward, 4 backward), with the matmul
weights those of the decoder layers. The embedding table is a lookup, not a matmul, and
the LM head is left out too: the ProRank score reads two logits at one position, and
GRPO's loss the completion tokens' logits only, so counting a full-vocabulary head at
every token would inflate the number (by a third at Qwen2.5-0.5B). Attention's own
score and value products (6 x layers x attention width x context per token) are not
counted either; at the sequence lengths of these stages (~300 tokens) they add under 2%.

Peak per device: a TPU's from aot.CHIPS (the --compile-for table) by the device_kind jax
reports; NVIDIA GPUs from a small table of dense bf16 peaks; on CPU the measured float32
matmul rate of this process (timed once, cached), so a CPU run's mfu is against what XLA
reaches here, not a datasheet.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Iterable

import jax
import numpy as np

from prorank_jax import aot

log = logging.getLogger(__name__)

# Dense (not 2:4 sparse) bf16 tensor-core peaks from NVIDIA's datasheets, per GPU.
# First match wins, so the PCIe H100 comes before the SXM one.
_GPU_PEAK_BF16 = (
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("h200", 989e12),
    ("a100", 312e12),
)

def matmul_params(params: Any) -> int:
    """Matmul weights of a params pytree: every `kernel` leaf (a Dense layer's; HF's
    *_proj.weight) but the LM head's. Biases and norms (rank 2 when layers are scanned)
    and the embedding table are not matmuls. Works on sharded global arrays and
    ShapeDtypeStructs (only shapes are read)."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if names and names[-1] == "kernel" and "lm_head" not in names:
            total += int(np.prod(np.shape(leaf)))
    return total


def train_flops_per_token(params: Any, updates_per_step: int = 1) -> float:
    """Model FLOPs one loop step spends per counted token: 6 per matmul weight per update."""
    return 6.0 * matmul_params(params) * updates_per_step


def gpu_peak_flops(device_kind: str) -> float | None:
    kind = device_kind.lower()
    for name, peak in _GPU_PEAK_BF16:
        if name in kind:
            return peak
    return None


@functools.cache
def measured_cpu_matmul_flops(size: int = 1024, passes: int = 3) -> float:
    """This process's float32 matmul rate on the CPU (FLOP/s): the best of a few timed
    [size, size] @ [size, size] products through XLA. Timed once per process (cached)."""
    cpu = jax.devices("cpu")[0]
    a = jax.device_put(np.random.RandomState(0).rand(size, size).astype(np.float32), cpu)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()  # compile
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    rate = 2.0 * size**3 / max(best, 1e-9)
    log.info("measured CPU matmul rate: %.1f GFLOP/s (the peak CPU runs' mfu is against)", rate / 1e9)
    return rate


def device_peak_flops(device) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, where the number comes from); None when unknown."""
    if device.platform == "tpu":
        chip = aot.chip_of_device_kind(device.device_kind)
        return (chip.peak_bf16_flops, f"{chip.generation} bf16 peak") if chip else (None, "unknown TPU")
    if device.platform == "gpu":
        peak = gpu_peak_flops(device.device_kind)
        return (peak, f"{device.device_kind} bf16 peak") if peak else (None, "unknown GPU")
    if device.platform == "cpu":
        return measured_cpu_matmul_flops(), "measured CPU matmul rate"
    return None, f"unknown platform {device.platform}"


def peak_flops(devices: Iterable | None = None) -> float | None:
    """Peak FLOP/s of the devices a step runs on (default: all of the job's).

    CPU devices of one process share its cores (--xla_force_host_platform_device_count
    splits one CPU into several devices), so a process's CPU devices count once, at the
    measured rate; accelerators add up per device."""
    devices = list(jax.devices() if devices is None else devices)
    total, cpu_processes = 0.0, set()
    for device in devices:
        if device.platform == "cpu":
            cpu_processes.add(device.process_index)
            continue
        peak, source = device_peak_flops(device)
        if peak is None:
            log.warning("no peak FLOP/s known for %s (%s): the metrics carry no mfu", device.device_kind, source)
            return None
        total += peak
    if cpu_processes:
        total += len(cpu_processes) * device_peak_flops(next(d for d in devices if d.platform == "cpu"))[0]
    return total


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOP utilisation, a fraction in [0, 1] (None when the peak is unknown)."""
    if not peak or seconds <= 0:
        return None
    return flops / seconds / peak
