"""Compile a run's programs for a TPU this machine does not have (ahead-of-time compilation).

With the `libtpu` wheel installed (requirements-tpu-aot.txt), JAX can describe a TPU
topology without the hardware (jax.experimental.topologies). A mesh over those device
descriptions, jax.ShapeDtypeStruct arguments carrying NamedShardings, and
`jitted.lower(...).compile()` run the real TPU compiler here, on the CPU. The compiled
program then says what it allocates per chip (memory_analysis) and what it computes
(cost_analysis). MaxText's train_compile.py is the well-known example of the practice.

This module owns: topology names -> device descriptions, the mesh over them, compiling
one program (`ProgramSpec`) into a per-chip `ProgramReport`, and the report of a whole run
(`CompileReport`: table, JSON, the does-not-fit error). Which programs a run executes is
the launcher's business (launch/compile_for.py).

Two corrections to what the compiler reports:
  * FLOPs: XLA's cost analysis counts the body of a loop once, so a 24-layer nn.scan comes
    out about 24 times too low. `loop_flops` counts the matmul FLOPs of the program's jaxpr
    twice, once with every loop iteration and once with each loop body once; the
    difference, split evenly over the chips, is added to the compiler's number.
  * memory: buffers other programs keep on the chip while this one runs (GRPO's frozen
    reference params during the update, the train state during sampling or validation)
    are not arguments of the program; a spec names them as `resident_bytes`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from prorank_jax import attention

GiB = 1024**3


class TopologyError(ValueError):
    """A topology name is unknown, or the TPU compiler (libtpu) is not installed."""


class DoesNotFitError(RuntimeError):
    """A compiled program needs more memory per chip than the chip has."""


# ----------------------------------------------------------------------------- chips
@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """Per-chip numbers of one TPU generation (one JAX device = one chip, megacore on v4/v5p)."""

    generation: str
    hbm_bytes: int
    peak_bf16_flops: float  # per second
    hbm_bytes_per_s: float


# From Google Cloud's TPU system architecture pages (cloud.google.com/tpu/docs/v4, /v5e,
# /v5p, /v6e, read 2026-11): HBM capacity per chip, peak bf16 compute per chip, HBM
# bandwidth per chip.
CHIPS: Mapping[str, ChipSpec] = {
    "v4": ChipSpec("v4", 32 * GiB, 275e12, 1228e9),
    "v5e": ChipSpec("v5e", 16 * GiB, 197e12, 819e9),
    "v5p": ChipSpec("v5p", 95 * GiB, 459e12, 2765e9),
    "v6e": ChipSpec("v6e", 32 * GiB, 918e12, 1640e9),
}

# libtpu's name of each generation in a "gen:AxBxC" topology, and whether its two
# TensorCores form one device (megacore), as on a real TPU VM.
_LIBTPU_GENERATION = {"v4": "v4", "v5e": "v5e", "v5p": "v5", "v6e": "v6e"}
_MEGACORE = {"v4": True, "v5e": False, "v5p": True, "v6e": False}
# Raw-form prefixes users write, by generation.
_GENERATION_ALIASES = {"v4": "v4", "v5e": "v5e", "v5litepod": "v5e", "v5lite": "v5e", "v5p": "v5p", "v5": "v5p",
                       "v6e": "v6e", "v6lite": "v6e"}


def chip_of_device_kind(device_kind: str) -> ChipSpec | None:
    """The chip a running TPU device is, from the device_kind jax reports ("TPU v4",
    "TPU v5 lite", "TPU v5p", "TPU v6 lite"); None for anything else (CPU, GPU, an unknown TPU)."""
    text = device_kind.strip().lower()
    if not text.startswith("tpu"):
        return None
    generation = _GENERATION_ALIASES.get(re.sub(r"[\s_-]", "", text[3:]))
    return CHIPS[generation] if generation else None


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice: generation, chip grid, and the chips each host (VM worker) holds."""

    name: str
    generation: str
    shape: tuple[int, ...]
    chips_per_host: tuple[int, int, int]

    @property
    def chip(self) -> ChipSpec:
        return CHIPS[self.generation]

    @property
    def num_chips(self) -> int:
        return math.prod(self.shape)

    @property
    def libtpu_name(self) -> str:
        return f"{_LIBTPU_GENERATION[self.generation]}:{'x'.join(map(str, self.shape))}"


# Cloud TPU names (chips x 2 for v4 / v5p, whose names count TensorCores), as the
# `gcloud compute tpus tpu-vm create --accelerator-type` flag spells them.
KNOWN_TOPOLOGIES: Mapping[str, Topology] = {
    "v4-8": Topology("v4-8", "v4", (2, 2, 1), (2, 2, 1)),
    "v4-32": Topology("v4-32", "v4", (2, 2, 4), (2, 2, 1)),
    "v5e-8": Topology("v5e-8", "v5e", (2, 4), (2, 4, 1)),
    "v5litepod-8": Topology("v5litepod-8", "v5e", (2, 4), (2, 4, 1)),
    "v5e-32": Topology("v5e-32", "v5e", (4, 8), (2, 2, 1)),
    "v5litepod-32": Topology("v5litepod-32", "v5e", (4, 8), (2, 2, 1)),
    "v5p-8": Topology("v5p-8", "v5p", (2, 2, 1), (2, 2, 1)),
    "v6e-8": Topology("v6e-8", "v6e", (2, 4), (2, 4, 1)),
}


def known_topology_names() -> list[str]:
    return list(KNOWN_TOPOLOGIES) + ["or GEN:AxB[xC] with GEN in v4, v5e, v5p, v6e (e.g. v5e:2x4, v4:2x2x1)"]


def resolve_topology(name: str) -> Topology:
    """A known name (v5e-8) or the raw form (v5e:2x4); a TopologyError listing both otherwise.

    Raw forms take a Cloud TPU host layout: one host for up to 8 chips (v5e / v6e) or 4
    chips (v4 / v5p), else 2x2 chips per host.
    """
    text = str(name).strip()
    if text in KNOWN_TOPOLOGIES:
        return KNOWN_TOPOLOGIES[text]
    match = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+){1,2})", text)
    generation = _GENERATION_ALIASES.get(match.group(1)) if match else None
    if generation is None:
        raise TopologyError(f"unknown TPU topology {name!r}; known: {', '.join(known_topology_names())}")
    shape = tuple(int(s) for s in match.group(2).split("x"))
    chips = math.prod(shape)
    if chips < 1:
        raise TopologyError(f"TPU topology {name!r} has no chips")
    single_host = chips <= (4 if _MEGACORE[generation] else 8)
    padded = shape + (1,) * (3 - len(shape))
    per_host = padded if single_host else (2, 2, 1)
    return Topology(text, generation, shape, per_host)


def topology_devices(topology: Topology) -> list:
    """Compile-only TPU device descriptions of the topology (needs the libtpu wheel)."""
    try:
        import libtpu  # noqa: F401  (the TPU compiler; only its presence is checked here)
    except ImportError:
        raise TopologyError(
            "compiling for a TPU needs the TPU compiler: pip install -r requirements-tpu-aot.txt "
            "(the libtpu version jax[tpu] pins for this jax)"
        ) from None
    from jax.experimental import topologies

    # libtpu takes /tmp/libtpu_lockfile so that two processes never drive one TPU; compile-only
    # device descriptions drive none, and without this a second compiling process (a parallel
    # test worker, a second --compile-for) is refused.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    kwargs = dict(chips_per_host_bounds=topology.chips_per_host, num_slices=1)
    if _MEGACORE[topology.generation]:
        kwargs["chip_config_name"] = "megacore"
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology.libtpu_name,
                                                 **kwargs).devices)
    except Exception as err:  # libtpu's own message names what it refused
        raise TopologyError(f"libtpu cannot describe topology {topology.name} ({topology.libtpu_name}): {err}") from None


def process_count(devices: Sequence) -> int:
    """Hosts of the topology: a multi-host slice runs one process per host."""
    return len({d.process_index for d in devices})


def struct(shape, dtype, sharding=None) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def structs_like(shapes, shardings):
    """ShapeDtypeStructs of a pytree of shapes, each with its sharding (a matching pytree)."""
    return jax.tree_util.tree_map(lambda x, s: struct(x.shape, x.dtype, s), shapes, shardings)


def per_chip_bytes(tree) -> int:
    """Bytes of a pytree of sharded ShapeDtypeStructs on the chip holding the largest shards."""
    total = 0
    for x in jax.tree_util.tree_leaves(tree):
        shape = x.sharding.shard_shape(tuple(x.shape)) if x.sharding is not None and x.shape else tuple(x.shape)
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


# ----------------------------------------------------------------------------- FLOPs
def _dot_flops(eqn) -> int:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval
    k = math.prod(lhs.shape[i] for i in lhs_contract)
    return 2 * k * math.prod(eqn.outvars[0].aval.shape)


def _sub_jaxprs(value):
    from jax.extend import core as jcore

    if isinstance(value, jcore.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jcore.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def loop_flops(jaxpr, while_trips: int = 1) -> tuple[int, int]:
    """Matmul FLOPs (dot_general) of a jaxpr: (every loop iteration counted, each loop body once).

    scan bodies run `length` times; while_loop bodies `while_trips` times (their trip count
    is data dependent, so the caller states a bound); of cond branches the largest counts.
    """
    full = once = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            flops = _dot_flops(eqn)
            full, once = full + flops, once + flops
            continue
        if name == "cond":
            counts = [loop_flops(b.jaxpr, while_trips) for b in eqn.params["branches"]]
            full, once = full + max(c[0] for c in counts), once + max(c[1] for c in counts)
            continue
        if name == "while":
            body_full, body_once = loop_flops(eqn.params["body_jaxpr"].jaxpr, while_trips)
            full, once = full + while_trips * body_full, once + body_once
            continue
        repeat = int(eqn.params["length"]) if name == "scan" else 1
        for sub in (j for v in eqn.params.values() for j in _sub_jaxprs(v)):
            sub_full, sub_once = loop_flops(sub, while_trips)
            full, once = full + repeat * sub_full, once + sub_once
    return full, once


# ----------------------------------------------------------------------------- one program
@dataclasses.dataclass
class ProgramSpec:
    """One program of a run: a jitted function, its argument structs, and what to say about it.

    args: ShapeDtypeStructs with the run's shardings (None where the run passes host numpy
      arrays and lets jit place them). static: keyword arguments passed as they are.
    resident_bytes: bytes per chip other buffers keep on the chip while this program runs.
    while_trips: iterations counted for each while_loop body (a decode loop's bound).
    chips: chips the program's work is split over (None: all of the topology's).
    what_to_change: the advice printed when it does not fit.
    """

    name: str
    fn: Callable
    args: tuple
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    resident_bytes: int = 0
    resident_note: str = ""
    while_trips: int = 1
    chips: int | None = None
    shapes: str = ""
    what_to_change: str = "more mesh.fsdp, model.remat=full, a smaller data.batch_size or data.max_length"


@dataclasses.dataclass
class ProgramReport:
    """Per-chip numbers of one compiled program (bytes and FLOPs are per chip).

    total_bytes = argument_bytes + output_bytes - alias_bytes + temp_bytes + resident_bytes
    (aliased outputs reuse their donated arguments' buffers).
    """

    name: str
    shapes: str
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    resident_bytes: int
    total_bytes: int
    hbm_bytes: int
    fits: bool
    compiler_flops: float  # XLA's count: each loop body once
    flops: float  # loop-corrected
    bytes_accessed: float
    roofline_s: float
    compile_s: float
    resident_note: str = ""
    what_to_change: str = ""
    compiler_error: str = ""  # set when the compiler refused the program for lack of HBM

    @property
    def shortfall_bytes(self) -> int:
        return max(self.total_bytes - self.hbm_bytes, 0)


def roofline_seconds(flops: float, bytes_accessed: float, chip: ChipSpec) -> float:
    """Lower bound on a step: the slower of compute at peak bf16 and memory traffic at full bandwidth."""
    return max(flops / chip.peak_bf16_flops, bytes_accessed / chip.hbm_bytes_per_s)


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return dict(cost or {})


# The TPU compiler refuses a program whose temporaries exceed HBM, e.g. "RESOURCE_EXHAUSTED: Ran
# out of memory on HBM, the total memory required for HLO temporaries (35.83G) exceeds available
# HBM (15.75G)" (XLA's sizes are binary: G = GiB).
_TEMPORARIES = re.compile(r"temporaries \((\d+(?:\.\d+)?)([KMGT]?)\)")


def refused_temp_bytes(message: str) -> int | None:
    """The temporaries a RESOURCE_EXHAUSTED compile error names, in bytes (None when it names none)."""
    match = _TEMPORARIES.search(message)
    if not match:
        return None
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2) or " "))


def platform_of(args) -> str:
    """The platform ("tpu", ...) of the devices a program's sharded arguments are placed on."""
    for leaf in jax.tree_util.tree_leaves(args):
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None:
            return next(iter(sharding.device_set)).platform
    return jax.default_backend()


def compile_program(spec: ProgramSpec, chip: ChipSpec, num_chips: int) -> ProgramReport:
    """Lower and compile one program for the topology's devices; its per-chip report.

    When the compiler refuses the program for lack of HBM, the report says it does not fit,
    with the temporaries the compiler named, the arguments from their shardings, and FLOPs
    from the jaxpr alone.
    """
    # Trace as the target platform traces (attention's "auto" choice), not as this CPU host.
    with attention.compiling_for(platform_of(spec.args)):
        jaxpr = jax.make_jaxpr(lambda *a: spec.fn(*a, **spec.kwargs))(*spec.args)
        start = time.perf_counter()
        lowered = spec.fn.lower(*spec.args, **spec.kwargs)
    full, once = loop_flops(jaxpr.jaxpr, spec.while_trips)
    chips = spec.chips or num_chips
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        compile_s = time.perf_counter() - start
        args = per_chip_bytes(spec.args)
        temp = refused_temp_bytes(str(err)) or 0
        return ProgramReport(
            name=spec.name, shapes=spec.shapes, argument_bytes=args, output_bytes=0, alias_bytes=0, temp_bytes=temp,
            resident_bytes=int(spec.resident_bytes), total_bytes=args + temp + int(spec.resident_bytes),
            hbm_bytes=chip.hbm_bytes, fits=False, compiler_flops=0.0, flops=full / chips, bytes_accessed=0.0,
            roofline_s=full / chips / chip.peak_bf16_flops, compile_s=compile_s, resident_note=spec.resident_note,
            what_to_change=spec.what_to_change, compiler_error=str(err).splitlines()[0][:500],
        )
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = _cost(compiled)
    compiler_flops = float(cost.get("flops", 0.0))
    flops = compiler_flops + (full - once) / chips
    bytes_accessed = float(cost.get("bytes accessed", 0.0))
    parts = dict(argument_bytes=int(memory.argument_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
                 alias_bytes=int(memory.alias_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes))
    total = (parts["argument_bytes"] + parts["output_bytes"] - parts["alias_bytes"] + parts["temp_bytes"]
             + spec.resident_bytes)
    return ProgramReport(
        name=spec.name, shapes=spec.shapes, **parts, resident_bytes=int(spec.resident_bytes), total_bytes=total,
        hbm_bytes=chip.hbm_bytes, fits=total <= chip.hbm_bytes, compiler_flops=compiler_flops, flops=flops,
        bytes_accessed=bytes_accessed, roofline_s=roofline_seconds(flops, bytes_accessed, chip),
        compile_s=compile_s, resident_note=spec.resident_note, what_to_change=spec.what_to_change,
    )


# ----------------------------------------------------------------------------- the run's report
@dataclasses.dataclass
class CompileReport:
    topology: Topology
    num_devices: int
    num_processes: int
    mesh: dict[str, int]
    programs: list[ProgramReport]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def fits(self) -> bool:
        return all(p.fits for p in self.programs)

    def to_json(self) -> dict:
        chip = self.topology.chip
        return {
            "topology": self.topology.name, "libtpu_topology": self.topology.libtpu_name,
            "generation": chip.generation, "chips": self.num_devices, "hosts": self.num_processes,
            "chip": {"hbm_bytes": chip.hbm_bytes, "peak_bf16_flops": chip.peak_bf16_flops,
                     "hbm_bytes_per_s": chip.hbm_bytes_per_s},
            "mesh": self.mesh, "fits": self.fits, "programs": [dataclasses.asdict(p) for p in self.programs],
            "notes": self.notes, "jax": jax.__version__, "libtpu": _libtpu_version(),
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    def table(self) -> str:
        chip = self.topology.chip
        head = (f"compiled for {self.topology.name} ({self.topology.libtpu_name}): {self.num_devices} x TPU "
                f"{chip.generation} chips, {self.num_processes} host(s), {chip.hbm_bytes / GiB:.0f} GiB HBM per chip, "
                f"mesh {self.mesh}; memory and FLOPs per chip")
        unit, scale = ("GiB", GiB) if max((p.total_bytes for p in self.programs), default=0) >= GiB else ("MiB", 2**20)
        cols = ("program", f"args {unit}", f"out {unit}", f"alias {unit}", f"temp {unit}", f"resident {unit}",
                f"total {unit}", "HBM %", "fits", "TFLOP/step", "roofline ms", "compile s")
        rows = []
        for p in self.programs:
            sizes = (p.argument_bytes, p.output_bytes, p.alias_bytes, p.temp_bytes, p.resident_bytes, p.total_bytes)
            rows.append((p.name, *(f"{b / scale:.2f}" for b in sizes), f"{100 * p.total_bytes / p.hbm_bytes:.1f}",
                         "yes" if p.fits else "NO", f"{p.flops / 1e12:.4g}", f"{1e3 * p.roofline_s:.3g}",
                         f"{p.compile_s:.1f}"))
        widths = [max(len(str(r[i])) for r in (cols, *rows)) for i in range(len(cols))]
        lines = [head, "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
        lines += [f"  {p.name}: {p.shapes}" for p in self.programs if p.shapes]
        lines += [f"  {p.name}: resident = {p.resident_note}" for p in self.programs if p.resident_note]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def check_fits(self) -> None:
        """DoesNotFitError naming every program that does not fit, the chip, and the shortfall."""
        bad = [p for p in self.programs if not p.fits]
        if not bad:
            return
        gen = self.topology.chip.generation
        lines = [
            f"{p.name} does not fit a TPU {gen} chip of {self.topology.name}: it needs {_gib(p.total_bytes)} GiB per "
            f"chip of {_gib(p.hbm_bytes)} GiB ({_gib(p.shortfall_bytes)} GiB short); try {p.what_to_change}"
            + (f" (the compiler: {p.compiler_error})" if p.compiler_error else "")
            for p in bad
        ]
        raise DoesNotFitError("\n".join(lines))


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def _libtpu_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("libtpu")
    except Exception:
        return None


def compile_programs(topology: Topology, devices: Sequence, mesh_shape: Mapping[str, int],
                     specs: Sequence[ProgramSpec], notes: Sequence[str] = (),
                     log: Callable[[str], Any] | None = None) -> CompileReport:
    """Compile every spec; the run's report (check_fits raises when one does not fit)."""
    programs = []
    for spec in specs:
        if log:
            log(f"compiling {spec.name} for {topology.name} ({spec.shapes}) ...")
        programs.append(compile_program(spec, topology.chip, len(devices)))
    return CompileReport(topology, len(devices), process_count(devices), dict(mesh_shape), programs, list(notes))
