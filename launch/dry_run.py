"""`--dry-run`: the mesh, every parameter's sharding, and memory per device, without the model.

Nothing of the model is allocated: the config is read (an HF folder's config.json, a run
folder's model_config.json, or the random-init config), params and optimizer state are
built as shapes only with jax.eval_shape, and the shardings come from the same rule
table (prorank_jax.sharding) and optimizer (prorank_jax.training) a real run uses.

Memory per device counts each array's shard on the device holding the most of it:
  params        in param_dtype, sharded by the rule table
  gradients     same shapes, dtypes and shardings as the params
  optimizer     the optax AdamW state of training.make_optimizer (mu and nu like the params,
                in the params' dtype; float32 params give 2 x params in float32)
Activations are not part of the total; a per-token figure is printed instead (see
activation_bytes_per_token). GRPO also keeps a frozen reference copy of the params for
its KL term, printed as a note.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable

import jax
import numpy as np

from prorank_jax import sharding as shd
from prorank_jax import training
from prorank_jax.config import ModelConfig
from prorank_jax.pretrained import ModelSource, random_init_config_file, source_folder
from prorank_jax.run_folder import model_config_file


class DryRunError(ValueError):
    """The model source of a dry run cannot be resolved to a config without loading weights."""


def model_config_of(source: ModelSource) -> tuple[ModelConfig, str]:
    """(ModelConfig, where it was read from) for a ModelSource, reading config files only."""
    overrides = source.overrides()
    if source.path:
        cfg_file = model_config_file(source_folder(source))
        if cfg_file is None:
            raise DryRunError(
                f"model.path={source.path}: no config.json (HF folder) or model_config.json (prorank run folder) "
                "there; download the checkpoint first (a dry run reads only its config.json)"
            )
    else:
        cfg_file = random_init_config_file(source)
        if not cfg_file.is_file():
            raise DryRunError(f"model.config={source.config}: no such config.json")
    try:
        hf_config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise DryRunError(f"{cfg_file}: not valid JSON ({err})") from None
    return ModelConfig.from_hf(hf_config, **overrides), str(cfg_file)


def abstract_params(config: ModelConfig, seed: int = 0):
    """The params pytree as jax.ShapeDtypeStruct leaves (model.init_params under eval_shape)."""
    from prorank_jax.model import init_params

    return jax.eval_shape(lambda: init_params(config, jax.random.key(seed)))


def per_device_bytes(shapes, shardings) -> int:
    """Bytes on the device holding the largest shard, summed over leaves."""
    total = 0
    leaves = jax.tree_util.tree_leaves(shapes)
    sh_leaves = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(leaves) != len(sh_leaves):
        raise ValueError(f"{len(leaves)} arrays but {len(sh_leaves)} shardings")
    for x, s in zip(leaves, sh_leaves):
        shard = s.shard_shape(tuple(x.shape)) if x.shape else ()
        total += math.prod(shard) * np.dtype(x.dtype).itemsize
    return total


def global_bytes(shapes) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(shapes))


def activation_bytes_per_token(config: ModelConfig) -> int:
    """Rough bytes kept for the backward pass per token (all layers, compute dtype).

    Without remat each layer keeps its norm inputs/outputs and residual (~4 x hidden), q/k/v
    and the attention output (2 x heads x head_dim + 2 x kv_heads x head_dim) and the MLP's
    gate, up and gated product (3 x intermediate); remat="full" keeps only each layer's input
    (hidden). The "dots" policies fall in between. Attention scores are not kept (fused
    attention) and logits are not counted.
    """
    c = config
    itemsize = np.dtype(jax.numpy.dtype(c.dtype)).itemsize
    if c.remat == "full":
        per_layer = c.hidden_size
    else:
        per_layer = (4 * c.hidden_size + 2 * c.num_attention_heads * c.head_dim
                     + 2 * c.num_key_value_heads * c.head_dim + 3 * c.intermediate_size)
    return per_layer * c.num_hidden_layers * itemsize


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


@dataclasses.dataclass
class DryRunReport:
    mesh_shape: dict[str, int]
    num_devices: int
    num_params: int
    params_bytes: int  # per device
    grads_bytes: int
    opt_state_bytes: int
    activation_per_token: int
    lines: list[str]

    @property
    def total_bytes(self) -> int:
        return self.params_bytes + self.grads_bytes + self.opt_state_bytes


def dry_run_report(model_source: ModelSource, mesh_config: training.MeshConfig,
                   optimizer_config: training.OptimizerConfig, loop_config: training.LoopConfig,
                   rules: shd.ShardingRules | None = None, devices=None) -> DryRunReport:
    """Everything print_dry_run prints, as data (the printed lines are in .lines).

    devices: the mesh's devices (default jax.devices(); --compile-for passes a TPU topology's)."""
    config, cfg_file = model_config_of(model_source)
    mesh = shd.make_mesh(mesh_config.data, mesh_config.fsdp, mesh_config.tensor, devices=devices)
    params = abstract_params(config, model_source.init_seed)
    tx = training.make_optimizer(optimizer_config, loop_config.steps)
    state = jax.eval_shape(lambda p: training.init_train_state(p, tx), params)
    state_sh = training.state_shardings(state, tx, mesh, rules)

    num_params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
    p_dev = per_device_bytes(state.params, state_sh.params)
    o_dev = per_device_bytes(state.opt_state, state_sh.opt_state)
    g_dev = p_dev  # gradients: the params' shapes, dtypes and shardings
    act = activation_bytes_per_token(config)
    devices = mesh.devices.reshape(-1)

    lines = [f"dry run: {config.model_type} from {cfg_file} ({num_params:,} parameters, "
             f"param_dtype={config.param_dtype}, compute dtype={config.dtype}, remat={config.remat})"]
    lines.append(f"mesh: {dict(mesh.shape)} over {len(devices)} devices "
                 f"({devices[0].platform}, {devices[0].device_kind}; {jax.process_count()} process(es))")
    lines.append("mesh devices (data x fsdp x tensor): "
                 + np.array2string(np.vectorize(lambda d: d.id)(mesh.devices), separator=",").replace("\n", ""))
    lines.append(f"parameter shardings ({len(jax.tree_util.tree_leaves(params))} arrays):")
    lines += ["  " + line for line in shd.describe_shardings(state.params, state_sh.params)]
    lines.append("memory per device (largest shard of every array):")
    lines.append(f"  params      {human(p_dev):>12}   (all devices together: {human(global_bytes(state.params))})")
    lines.append(f"  gradients   {human(g_dev):>12}")
    lines.append(f"  optimizer   {human(o_dev):>12}   (AdamW mu + nu; {human(global_bytes(state.opt_state))} in all)")
    lines.append(f"  total       {human(p_dev + g_dev + o_dev):>12}   (activations not included)")
    lines.append(f"  activations not included: about {human(act)} per token on its device "
                 f"(remat={config.remat}); multiply by the tokens per device (local batch x length)")
    lines.append(f"  note: GRPO (stage 1) also keeps a frozen reference copy of the params: +{human(p_dev)} per device")
    return DryRunReport(dict(mesh.shape), len(devices), num_params, p_dev, g_dev, o_dev, act, lines)


def print_dry_run(model_source: ModelSource, mesh_config: training.MeshConfig,
                  optimizer_config: training.OptimizerConfig, loop_config: training.LoopConfig,
                  rules: shd.ShardingRules | None = None, *, print_fn: Callable[[str], Any] = print,
                  devices=None) -> DryRunReport:
    """Print the mesh, one line per parameter (path, shape, dtype, PartitionSpec) and the
    memory per device, without allocating the model. Returns the report."""
    report = dry_run_report(model_source, mesh_config, optimizer_config, loop_config, rules, devices=devices)
    for line in report.lines:
        print_fn(line)
    return report
