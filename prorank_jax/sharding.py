"""One mesh ("data", "fsdp", "tensor") and one table from logical to mesh axes.

Every parameter gets logical axes from its name (PARAM_LOGICAL_AXES); the rule
table (ShardingRules) maps logical axes to mesh axes. Batches are split over
("data", "fsdp"). Changing a parallelism strategy means changing the rules,
never the model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Param name (the last two path entries) -> logical axes of its (unstacked) shape.
PARAM_LOGICAL_AXES: dict[tuple[str, str], tuple[str, ...]] = {
    ("embed_tokens", "embedding"): ("vocab", "embed"),
    ("q_proj", "kernel"): ("embed", "heads"),
    ("k_proj", "kernel"): ("embed", "kv_heads"),
    ("v_proj", "kernel"): ("embed", "kv_heads"),
    ("o_proj", "kernel"): ("heads", "embed"),
    ("q_proj", "bias"): ("heads",),
    ("k_proj", "bias"): ("kv_heads",),
    ("v_proj", "bias"): ("kv_heads",),
    ("o_proj", "bias"): ("embed",),
    ("gate_proj", "kernel"): ("embed", "mlp"),
    ("up_proj", "kernel"): ("embed", "mlp"),
    ("down_proj", "kernel"): ("mlp", "embed"),
    ("gate_proj", "bias"): ("mlp",),
    ("up_proj", "bias"): ("mlp",),
    ("down_proj", "bias"): ("embed",),
    ("lm_head", "kernel"): ("embed", "vocab"),
}
NORM_AXES = ("norm",)


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Logical axis -> mesh axis (or tuple of mesh axes, or None for replicated).

    Defaults: FSDP shards the embed dimension of every matrix, tensor parallelism
    shards heads / mlp / vocab, the stacked layer axis and norms stay replicated,
    and batches are split over data and fsdp together. A dimension whose size does
    not divide by its mesh axes is replicated instead (say, a 7-head model on a
    tensor axis of 2), which keeps tiny test models shardable on any mesh.
    """

    rules: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {
            "batch": ("data", "fsdp"),
            "length": None,
            "vocab": "tensor",
            "embed": "fsdp",
            "heads": "tensor",
            "kv_heads": "tensor",
            "mlp": "tensor",
            "layers": None,
            "norm": None,
        }
    )

    def mesh_axes(self, logical: str):
        if logical not in self.rules:
            raise KeyError(f"no sharding rule for logical axis {logical!r}; rules cover {sorted(self.rules)}")
        return self.rules[logical]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh; one of the sizes may be -1 for "the rest"."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh shape {sizes}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh shape {sizes}: {len(devices)} devices do not divide by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) needs {math.prod(sizes)} devices, "
            f"have {len(devices)}"
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def param_logical_axes(path: tuple, ndim: int) -> tuple[str, ...]:
    """Logical axes of one param from its pytree path; stacked layer params get "layers" first."""
    names = tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)
    if names[-1] == "weight":
        axes = NORM_AXES
    else:
        key = names[-2:]
        if key not in PARAM_LOGICAL_AXES:
            raise KeyError(f"no logical axes for parameter {'/'.join(names)}; add it to PARAM_LOGICAL_AXES")
        axes = PARAM_LOGICAL_AXES[key]
    if "layers" in names:
        axes = ("layers",) + axes
    if len(axes) != ndim:
        raise ValueError(f"parameter {'/'.join(names)} has {ndim} dims but logical axes {axes}")
    return axes


def spec_for(shape: Sequence[int], logical: Sequence[str], mesh: Mesh, rules: ShardingRules) -> P:
    parts = []
    used: set[str] = set()
    for size, name in zip(shape, logical):
        axes = rules.mesh_axes(name)
        axes_tuple = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        axes_tuple = tuple(a for a in axes_tuple if mesh.shape[a] > 1 and a not in used)
        ways = math.prod(mesh.shape[a] for a in axes_tuple)
        if not axes_tuple or size % ways:
            parts.append(None)
            continue
        used.update(axes_tuple)
        parts.append(axes_tuple[0] if len(axes_tuple) == 1 else axes_tuple)
    return P(*parts)


def param_shardings(params, mesh: Mesh, rules: ShardingRules | None = None):
    """NamedSharding for every leaf of params (arrays or jax.ShapeDtypeStruct)."""
    rules = rules or ShardingRules()
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, spec_for(x.shape, param_logical_axes(path, len(x.shape)), mesh, rules)),
        params,
    )


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: ShardingRules | None = None) -> NamedSharding:
    """Leading (batch) axis over the batch rule's mesh axes; the rest replicated."""
    rules = rules or ShardingRules()
    axes = rules.mesh_axes("batch")
    return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh, rules: ShardingRules | None = None) -> int:
    """How many ways the batch axis is split: batch sizes must be a multiple of it."""
    axes = (rules or ShardingRules()).mesh_axes("batch")
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(mesh.shape[a] for a in axes)


def rows_shared_across_processes(process_grid: np.ndarray, axis_names: Sequence[str],
                                 batch_axes: Sequence[str]) -> list[tuple[int, ...]]:
    """The groups of processes that hold the same batch rows, on a mesh whose device at each
    position belongs to process process_grid[position]: the batch is split over batch_axes
    and replicated over the other axes, so processes meeting in one batch block see one copy
    of its rows. Empty when every block lies within one process (what shard_batch needs)."""
    grid = np.asarray(process_grid)
    order = [axis_names.index(a) for a in batch_axes] + [i for i, a in enumerate(axis_names) if a not in batch_axes]
    blocks = grid.transpose(order).reshape(math.prod(grid.shape[i] for i in order[:len(batch_axes)]), -1)
    groups = {tuple(sorted(set(int(p) for p in row))) for row in blocks}
    return sorted(g for g in groups if len(g) > 1)


@functools.lru_cache(maxsize=None)
def _check_rows_within_processes(mesh: Mesh, batch_axes: tuple[str, ...]) -> None:
    grid = np.vectorize(lambda d: d.process_index, otypes=[int])(mesh.devices)
    shared = rows_shared_across_processes(grid, list(mesh.axis_names), batch_axes)
    if not shared:
        return
    replicas = [a for a in mesh.axis_names if a not in batch_axes and mesh.shape[a] > 1]
    per_process = mesh.devices.size // len(set(grid.reshape(-1).tolist()))
    named = ", ".join(f"mesh.{a}={mesh.shape[a]}" for a in replicas)
    raise ValueError(
        f"{named} spans processes (processes {' and '.join(map(str, shared[0]))} share one group): a batch is split "
        f"by rows over ({', '.join(batch_axes)}) only, so those processes would have to feed the same rows, and "
        f"each reads its own; keep {' x '.join('mesh.' + a for a in replicas)} within one process's "
        f"{per_process} device(s) and span the processes with mesh.data or mesh.fsdp")


def check_rows_within_processes(mesh: Mesh, rules: ShardingRules | None = None) -> None:
    """A ValueError naming the mesh axis (tensor, by the default rules) that spans processes
    while the batch is replicated over it: each process feeds its own rows, which
    make_array_from_process_local_data would take as copies of one another's (wrong data,
    silently) or refuse for their shapes. Free after the first call per mesh."""
    axes = (rules or ShardingRules()).mesh_axes("batch")
    _check_rows_within_processes(mesh, (axes,) if isinstance(axes, str) else tuple(axes or ()))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, rules: ShardingRules | None = None) -> dict:
    """Assemble global batch arrays from each process's local rows (multi-host safe;
    with one process the local rows are the whole batch)."""
    check_rows_within_processes(mesh, rules)
    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v), rules), np.asarray(v))
        for k, v in batch.items()
    }


def mesh_of(tree) -> Mesh | None:
    """The mesh the leaves of a pytree of arrays are placed on by NamedSharding (None when
    they are plain single-device arrays)."""
    for leaf in jax.tree_util.tree_leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


@functools.lru_cache(maxsize=None)
def _reshard_fn(sharding: NamedSharding):
    return jax.jit(lambda x: x, out_shardings=sharding)


def process_local_rows(x: jax.Array, mesh: Mesh, rules: ShardingRules | None = None) -> np.ndarray:
    """This process's rows of a global array as NumPy: the inverse of shard_batch.

    The array is first laid out by batch_sharding (a jitted identity, so on several
    processes every process takes part), then this process's shards are read in row
    order, each row block once (shards repeated over a replicated axis are skipped).
    """
    x = _reshard_fn(batch_sharding(mesh, x.ndim, rules))(x)
    blocks = {}
    for shard in x.addressable_shards:
        start = shard.index[0].start or 0
        blocks.setdefault(start, shard.data)
    return np.concatenate([np.asarray(blocks[k]) for k in sorted(blocks)], axis=0)


def place_rows(x: np.ndarray, mesh: Mesh, rules: ShardingRules | None = None) -> jax.Array:
    """An array that every process holds whole (the same value on each), split on its
    leading axis over the batch axes when its rows divide, else replicated over the mesh.

    For inference that runs the same inputs everywhere: the Reranker on its own local
    mesh, or on a training mesh spanning processes during validation.
    """
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, rows_sharding(x.shape, mesh, rules), lambda index: x[index])


def rows_sharding(shape: Sequence[int], mesh: Mesh, rules: ShardingRules | None = None) -> NamedSharding:
    """How place_rows lays out an array of `shape`: split on its leading axis over the batch
    axes when its rows divide, else replicated (so a program can be compiled ahead for it)."""
    divides = len(shape) and shape[0] % batch_divisor(mesh, rules) == 0
    return batch_sharding(mesh, len(shape), rules) if divides else replicated(mesh)


def fetch(x: jax.Array) -> np.ndarray:
    """The whole value of an array as NumPy on every process (gathered over the mesh when
    this process does not hold all of it)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    x = _reshard_fn(replicated(x.sharding.mesh))(x)
    return np.asarray(x.addressable_shards[0].data)


def global_row_index(local_rows: int, mesh: Mesh, rules: ShardingRules | None = None) -> jax.Array:
    """[local_rows * processes] int32 global array holding each row's own global index,
    laid out as shard_batch lays out a batch of local_rows rows per process."""
    check_rows_within_processes(mesh, rules)
    sharding = batch_sharding(mesh, 1, rules)
    total = local_rows * jax.process_count()
    return jax.make_array_from_callback((total,), sharding, lambda index: np.arange(total, dtype=np.int32)[index])


def max_over_processes(value: int) -> int:
    """The largest of one integer over all processes (the value itself on one process)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def describe_shardings(params, shardings) -> list[str]:
    """One line per parameter: path, shape, dtype, partition spec (for --dry-run output)."""
    lines = []
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    flat_s = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, x), s in zip(flat, flat_s):
        name = "/".join(getattr(k, "key", str(k)) for k in path)
        lines.append(f"{name:60s} {str(tuple(x.shape)):22s} {str(x.dtype):9s} {s.spec}")
    return lines
