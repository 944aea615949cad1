"""What both training stages share: optimizer, sharded train step, loop, metrics.

A stage supplies a pure loss function ``loss_fn(params, batch) -> (loss, metrics)``
and a batch producer; everything else (AdamW with warmup + cosine decay and
clipping, the jitted step with explicit shardings, the non-finite guard, metric
logging, periodic checkpoints, preemption) lives here once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from jax.sharding import Mesh, NamedSharding

from prorank_jax import paths
from prorank_jax import sharding as shd
from prorank_jax.files import open_for_append
from prorank_jax.multihost import allgather_json
from prorank_jax.status import STATUS

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup then cosine decay to end_lr_ratio * learning_rate,
    after clipping gradients to a global norm of max_grad_norm (0 disables)."""

    learning_rate: float = 1e-5
    warmup_steps: int = 10
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0

    def __post_init__(self):
        for name in ("learning_rate", "end_lr_ratio", "weight_decay", "eps", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"optimizer.{name}={getattr(self, name)} must be >= 0")
        if self.warmup_steps < 0:
            raise ValueError(f"optimizer.warmup_steps={self.warmup_steps} must be >= 0")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes; one of them may be -1 for "all remaining devices"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def build(self) -> Mesh:
        return shd.make_mesh(self.data, self.fsdp, self.tensor)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How long to train and how often to log, evaluate and checkpoint.

    save_every / eval_every of 0 disable periodic saving / evaluation (a final
    checkpoint is always written). With eval_every > 0 a fresh run also evaluates
    the starting model (logged as step 0), so every validation curve has its baseline.
    max_to_keep bounds the checkpoints on disk.

    Watching a run: tensorboard writes every metrics.jsonl scalar to <out_dir>/tensorboard
    as well; wandb ({project: NAME, ...}, the keys of wandb.init) logs them to Weights &
    Biases; profile_steps [first, last] traces those steps (as metrics.jsonl numbers them)
    with jax.profiler into <out_dir>/profile.
    """

    steps: int = 100
    seed: int = 0
    log_every: int = 1
    eval_every: int = 0
    save_every: int = 0
    max_to_keep: int = 2
    async_checkpointing: bool = True
    progress_bar: bool = True
    tensorboard: bool = True
    wandb: Optional[Mapping[str, Any]] = dataclasses.field(default=None, hash=False)
    profile_steps: Optional[tuple[int, int]] = None

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError(f"loop.steps={self.steps} must be positive")
        for name in ("log_every", "eval_every", "save_every", "max_to_keep"):
            if getattr(self, name) < 0:
                raise ValueError(f"loop.{name}={getattr(self, name)} must be >= 0")
        from prorank_jax.wandb_logging import check_wandb_config

        object.__setattr__(self, "wandb", check_wandb_config(self.wandb))
        object.__setattr__(self, "profile_steps", check_profile_steps(self.profile_steps, self.steps))


def check_profile_steps(value, steps: int) -> tuple[int, int] | None:
    """loop.profile_steps as (first, last): two loop steps with 1 <= first <= last <= loop.steps."""
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"loop.profile_steps={value!r} must be two step numbers [first, last]")
    first, last = value
    if not 1 <= first <= last <= steps:
        raise ValueError(f"loop.profile_steps={list(value)} must satisfy 1 <= first <= last <= loop.steps={steps}")
    return (first, last)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    decay_steps = max(total_steps, config.warmup_steps + 1)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if config.warmup_steps else config.learning_rate,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=decay_steps,
        end_value=config.learning_rate * config.end_lr_ratio,
    )
    parts = []
    if config.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(config.max_grad_norm))
    parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                             weight_decay=config.weight_decay))
    return optax.chain(*parts)


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any
    skipped: jax.Array  # updates refused because the loss or a gradient was not finite


def init_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), jnp.zeros((), jnp.int32))


def state_shardings(state_shapes: TrainState, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules: shd.ShardingRules | None = None) -> TrainState:
    """Shardings of a TrainState: params by the rule table, optimizer moments like their params."""
    param_sh = shd.param_shardings(state_shapes.params, mesh, rules)
    opt_sh = optax.tree_map_params(
        optimizer, lambda _, s: s, state_shapes.opt_state, param_sh,
        transform_non_params=lambda _: shd.replicated(mesh),
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    return TrainState(shd.replicated(mesh), param_sh, opt_sh, shd.replicated(mesh))


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


LossFn = Callable[[Any, Mapping[str, jax.Array]], tuple[jax.Array, Mapping[str, jax.Array]]]


def apply_gradients(state: TrainState, loss, aux, grads, optimizer) -> tuple[TrainState, dict]:
    """One optimizer update, refused (state kept, counter bumped) when anything is non-finite."""
    finite = jnp.isfinite(loss) & _all_finite(grads)

    def update(params_and_opt):
        params, opt_state = params_and_opt
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_opt_state

    # A cond, not a where(finite, new, old) over the state: on XLA's CPU backend the select
    # kept old and new params and moments alive together (2.5 param-sized temporaries in the
    # compiled update against 1.0 with the cond, memory_analysis). The TPU compiler updates
    # in place either way (the 0.5B score step: 6.78 GiB of temporaries on v5e-8 with both).
    params, opt_state = jax.lax.cond(finite, update, lambda x: x, (state.params, state.opt_state))
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           skipped=state.skipped + (~finite).astype(jnp.int32))
    metrics = dict(aux)
    metrics.update(loss=loss, grad_norm=optax.global_norm(grads), update_skipped=(~finite).astype(jnp.float32))
    return new_state, metrics


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, mesh: Mesh,
                    state_sharding: TrainState, batch_example: Mapping[str, Any],
                    rules: shd.ShardingRules | None = None, donate: bool = True):
    """jax.jit of one update with explicit in/out shardings (pjit): params and optimizer
    state by the rule table, every batch array split on its leading axis."""
    batch_sh = {k: shd.batch_sharding(mesh, np.ndim(v), rules) for k, v in batch_example.items()}

    # Named so that a profile's trace shows the update as jit_train_step.
    def train_step(state: TrainState, batch):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        return apply_gradients(state, loss, aux, grads, optimizer)

    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sh),
        out_shardings=(state_sharding, shd.replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )


def lazy_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, mesh: Mesh,
                    state_sharding: TrainState, per_batch: Callable | None = None):
    """make_train_step built on the first batch (its keys and ranks fix the shardings), each
    host batch laid out on the mesh once. per_batch(compiled step) -> step wraps the compiled
    step for a stage that runs it more than once per batch (rl.train.repeated_updates)."""
    compiled = {}

    def step(state, batch):
        if "fn" not in compiled:
            fn = make_train_step(loss_fn, optimizer, mesh=mesh, state_sharding=state_sharding, batch_example=batch)
            compiled["fn"] = fn if per_batch is None else per_batch(fn)
        return compiled["fn"](state, shd.shard_batch(batch, mesh))

    return step


# ----------------------------------------------------------------------------- metrics
class MetricsLogger:
    """Appends one JSON object per logged step to <out>/metrics.jsonl (flushed each time),
    writes the same scalars to TensorBoard event files (<out>/tensorboard, unless
    tensorboard=False) and to W&B when `wandb` configures it, and keeps a tqdm bar with a
    few headline numbers, tokens/s and MFU. Only process 0 writes anything."""

    def __init__(self, out_dir: str | os.PathLike, total_steps: int, start_step: int = 0,
                 headline: tuple[str, ...] = ("loss",), progress_bar: bool = True, desc: str = "train",
                 tensorboard: bool = False, wandb: Mapping[str, Any] | None = None):
        self.path = paths.as_path(out_dir) / "metrics.jsonl"
        self._file = open_for_append(self.path)  # in a bucket: the object rewritten whole at each flush
        self.headline = headline
        self.total_steps = total_steps
        self._bar = None
        self._sinks: list[Any] = []  # each has log_row(row) and close()
        if jax.process_index() != 0:
            return
        if progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True)
        if tensorboard:
            from prorank_jax.tensorboard_events import FOLDER, ScalarEventWriter

            self._sinks.append(ScalarEventWriter(epath.Path(str(out_dir)) / FOLDER))
        if wandb:
            from prorank_jax.wandb_logging import WandbRun, read_run_config

            self._sinks.append(WandbRun(wandb, out_dir, read_run_config(out_dir)))

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict:
        row = {"step": int(step), "time": round(time.time(), 3)}
        for key, value in metrics.items():
            value = np.asarray(value)
            row[key] = float(value) if value.size == 1 else value.tolist()
        if jax.process_index() == 0:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
            for sink in self._sinks:
                _watching(sink.log_row, row)
        postfix = progress_postfix(row, self.headline)
        if self._bar is not None and postfix:
            self._bar.set_postfix(postfix)
        if postfix and jax.process_index() == 0:
            log.info("step %d/%d: %s", row["step"], self.total_steps, " ".join(f"{k}={v}" for k, v in postfix.items()))
        return row

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._file.close()
        for sink in self._sinks:
            _watching(sink.close)


def _watching(call: Callable, *args) -> None:
    """A TensorBoard or W&B write that fails (a bucket's transient error, W&B's service) is
    logged, not raised: watching must not end a run, and metrics.jsonl still has every row."""
    try:
        call(*args)
    except Exception as err:  # noqa: BLE001 - any failure of an optional sink
        log.warning("%s failed (%s: %s); training goes on, metrics.jsonl has every row",
                    getattr(call, "__qualname__", call), type(err).__name__, err)


def progress_postfix(row: Mapping[str, Any], headline: tuple[str, ...]) -> dict[str, str]:
    """What the progress bar shows of a logged row: the headline numbers, tokens/s and MFU."""
    postfix = {k: f"{row[k]:.4g}" for k in headline if isinstance(row.get(k), float)}
    if isinstance(row.get("tokens_per_s"), float):
        postfix["tok/s"] = f"{row['tokens_per_s']:,.0f}"
    if isinstance(row.get("mfu"), float):
        postfix["mfu"] = f"{100 * row['mfu']:.3g}%"
    return postfix


def read_metrics(out_dir: str | os.PathLike) -> list[dict]:
    path = paths.as_path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean_metrics(rows: list[Mapping[str, Any]]) -> dict[str, float]:
    """Average of per-step device metrics (fetched to host once per log interval)."""
    rows = jax.device_get(rows)
    keys = rows[0].keys() if rows else []
    return {k: float(np.mean([np.asarray(r[k], np.float64) for r in rows])) for k in keys}


Batches = Iterator[Mapping[str, Any]]


@dataclasses.dataclass
class StepOutput:
    """What a stage's batch producer hands the loop for one step.

    host_metrics are this process's values for its own rows: a mean over
    host_weights[name] items (default 1), or, for a name in host_totals, this process's
    share of a per-step total. The loop reduces them over processes and steps
    (reduce_host_metrics), so a multi-process run logs what one process logs for the
    same global batch."""

    batch: Mapping[str, Any]
    host_metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    tokens: int = 0  # tokens processed this step (for tokens/s)
    host_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    host_totals: frozenset[str] = frozenset()


def host_window(outputs: list[StepOutput]) -> dict[str, list[float]]:
    """{name: [weighted sum, weight]} of one process's host metrics over a log window; a
    total's weight is its number of steps (the same on every process)."""
    window: dict[str, list[float]] = {}
    for out in outputs:
        for name, value in out.host_metrics.items():
            weight = 1.0 if name in out.host_totals else float(out.host_weights.get(name, 1.0))
            entry = window.setdefault(name, [0.0, 0.0])
            entry[0] += float(value) * weight
            entry[1] += weight
    return window


def reduce_host_metrics(windows: list[Mapping[str, list[float]]], totals: frozenset[str]) -> dict[str, float]:
    """The logged value of each host metric from every process's host_window: a mean is
    (sum of weighted sums) / (sum of weights) over processes; a total is summed over
    processes and averaged over the window's steps."""
    names = list(windows[0]) if windows else []
    reduced = {}
    for name in names:
        value = sum(w[name][0] for w in windows)
        weight = windows[0][name][1] if name in totals else sum(w[name][1] for w in windows)
        reduced[name] = value / weight if weight else float("nan")
    return reduced


def step_rng(base: jax.Array, step: int) -> jax.Array:
    """The key of one step: a function of (run seed, step) only, so a resumed run draws
    exactly what an uninterrupted one would have."""
    return jax.random.fold_in(base, step)


@dataclasses.dataclass
class LoopResult:
    state: TrainState
    last_step: int
    completed: bool  # False when a preemption signal stopped the loop early


def run_loop(
    *,
    state: TrainState,
    start_step: int,
    train_step: Callable[[TrainState, Mapping[str, Any]], tuple[TrainState, Mapping[str, Any]]],
    produce: Callable[[TrainState, jax.Array], StepOutput],
    loop: LoopConfig,
    out_dir: str | os.PathLike,
    base_rng: jax.Array,
    checkpointer=None,
    data_state: Callable[[], dict] | None = None,
    evaluate: Callable[[TrainState], Mapping[str, float]] | None = None,
    headline: tuple[str, ...] = ("loss",),
    desc: str = "train",
    updates_per_step: int = 1,
) -> LoopResult:
    """Run loop steps start_step .. loop.steps - 1 (one produce + one train_step each).

    Device metrics are fetched to the host only at log steps, so the loop does not
    wait on every update. Checkpoints hold the loop step, params, optimizer state,
    the run's base RNG key, every process's data_state() with the process count and the
    skipped updates (checkpoint.data_state_to_save), and the checkpointer's run_config.
    A SIGTERM (preemption) makes the loop save the current step and return early; on
    multi-process runs all processes stop at the same step when any of them got the signal.

    Each logged row has tokens_per_s (every process's tokens over the window's time) and,
    where the devices' peak is known, mfu: the window's model FLOPs
    (utilisation.train_flops_per_token x tokens; updates_per_step updates per loop step)
    over its time and the job's peak FLOP/s. A stage whose step does more than its updates
    (GRPO's sampling) counts only the updates' FLOPs, over the whole step's time.
    """
    from prorank_jax import preemption, utilisation
    from prorank_jax.profiling import StepProfiler

    flops_per_token = utilisation.train_flops_per_token(state.params, updates_per_step)
    peak = utilisation.peak_flops()  # before the first compile: the CPU measurement then has the cores
    logger = MetricsLogger(out_dir, loop.steps, start_step, headline, loop.progress_bar, desc,
                           tensorboard=loop.tensorboard, wandb=loop.wandb)
    profiler = StepProfiler(out_dir, loop.profile_steps)
    pending: list[Mapping[str, Any]] = []
    host_pending: list[StepOutput] = []
    tokens, window_start = 0, time.perf_counter()
    done = start_step

    def save(step: int) -> None:
        if checkpointer is not None:
            from prorank_jax.checkpoint import data_state_to_save

            extra = data_state_to_save(data_state() if data_state else {}, int(state.skipped))
            checkpointer.save(step, params=state.params, opt_state=state.opt_state, rng=base_rng,
                              data_state=extra, force=True)

    completed = True
    try:
        with preemption.preemption_guard():
            if evaluate is not None and loop.eval_every and start_step == 0:
                logger.log(0, {f"eval/{k}": v for k, v in evaluate(state).items()})
            for step in range(start_step, loop.steps):
                done = step + 1
                profiler.before_step(done)
                with profiler.annotate(done):
                    out = produce(state, step_rng(base_rng, step))
                    state, metrics = train_step(state, out.batch)
                profiler.after_step(done, (state, metrics))
                pending.append(metrics)
                host_pending.append(dataclasses.replace(out, batch={}))  # the window keeps no batches
                tokens += out.tokens
                if done % max(loop.log_every, 1) == 0 or done == loop.steps:
                    row = mean_metrics(pending)
                    # A collective: every process logs at the same steps.
                    gathered = allgather_json({"window": host_window(host_pending), "tokens": tokens})
                    if host_pending and host_pending[0].host_metrics:
                        row.update(reduce_host_metrics([g["window"] for g in gathered], host_pending[0].host_totals))
                    seconds = max(time.perf_counter() - window_start, 1e-9)
                    all_tokens = sum(g["tokens"] for g in gathered)
                    row["tokens_per_s"] = all_tokens / seconds
                    row.update(window_mfu(flops_per_token * all_tokens, seconds, peak))
                    row["skipped_updates_total"] = int(state.skipped)
                    logger.log(done, row)
                    pending, host_pending, tokens, window_start = [], [], 0, time.perf_counter()
                if evaluate is not None and loop.eval_every and done % loop.eval_every == 0:
                    eval_start = time.perf_counter()
                    logger.log(done, {f"eval/{k}": v for k, v in evaluate(state).items()})
                    window_start += time.perf_counter() - eval_start  # validation is not training time
                logger.advance()
                if preemption.stop_requested():
                    save(done)
                    STATUS.info("preemption signal: saved step %d, stopping", done)
                    completed = done == loop.steps
                    break
                if done == loop.steps or (loop.save_every and done % loop.save_every == 0):
                    save(done)
    finally:
        profiler.stop()
        if checkpointer is not None:
            checkpointer.wait()
        logger.close()
    return LoopResult(state, done, completed)


def window_mfu(flops: float, seconds: float, peak: float | None) -> dict[str, float]:
    """{"mfu": ...} of a log window, or {} where the devices' peak is unknown."""
    from prorank_jax.utilisation import mfu

    value = mfu(flops, seconds, peak)
    return {} if value is None else {"mfu": value}
