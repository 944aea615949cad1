"""Training checkpoints (orbax) in a run folder (its metadata files: prorank_jax.run_folder_io).

A run folder looks like::

    <out>/run_config.json        the resolved training config (written once)
    <out>/model_config.json      the HF config.json of the model being trained
    <out>/tokenizer/             the tokenizer files the run used
    <out>/checkpoints/<step>/    one orbax checkpoint per saved step:
        params/                    the params pytree            (StandardSave)
        opt_state/                 the optax state pytree       (StandardSave)
        train_meta/                step, RNG key, data-iterator state (JsonSave)
        config/                    the run's resolved config as of this save (JsonSave;
                                   absent from checkpoints written before it existed)

Atomicity: orbax writes a step into ``<step>.orbax-checkpoint-tmp``, writes
``commit_success.txt`` into it once every item is on disk, then renames it to
``<step>``. A folder without the suffix and with that file is therefore complete
unless something damaged it later; ``latest_step`` also checks each item's own
metadata so a folder with a missing or unreadable item is skipped (with a warning
naming it) for the previous complete step. Damage below the metadata (a truncated
array file) only shows when the arrays are read: ``restore_latest`` then falls back
step by step to the newest one that restores, and a writable Checkpointer moves the
unrestorable newer folders aside so their steps can be saved again.

The RNG key is stored as its raw key data (``jax.random.key_data``, a few uint32
words) plus the name of its PRNG implementation, inside the JSON item, and rebuilt
with ``jax.random.wrap_key_data``. Keeping it out of the array items means it never
carries a device placement, so a key saved on 8 devices restores anywhere. Legacy
raw ``uint32`` keys (``jax.random.PRNGKey``) round-trip as raw arrays.

Preemption (SIGTERM caught as a flag, agreed across processes) is in
``prorank_jax.preemption``; the training loop polls it once per step and saves the
current step with ``force=True`` before it stops.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from prorank_jax import paths
from prorank_jax.multihost import allgather_json, any_process, sync_processes

log = logging.getLogger(__name__)

PARAMS, OPT_STATE, TRAIN_META, CONFIG = "params", "opt_state", "train_meta", "config"
ITEM_NAMES = (PARAMS, OPT_STATE, TRAIN_META, CONFIG)
ARRAY_ITEMS = (PARAMS, OPT_STATE)
FORMAT_VERSION = 1
# Orbax's own names (orbax.checkpoint._src.path.atomicity_types); checked by the tests.
TMP_SUFFIX = ".orbax-checkpoint-tmp"
COMMIT_FILE = "commit_success.txt"
# The barrier that ends orbax's Checkpointer.restore (its key, no prefix set), orbax 0.12.8.
ORBAX_RESTORE_BARRIER = "Checkpointer:restore"
PYTREE_METADATA_FILE = "_METADATA"
JSON_ITEM_FILE = "metadata"


class CheckpointError(RuntimeError):
    """A checkpoint or run folder is missing, incomplete or does not match what was asked."""


# ----------------------------------------------------------------------------- folder checks
def _step_dirs(directory: Path) -> tuple[dict[int, Path], list[Path]]:
    """({step: finalized-looking step folder}, [orbax temporary folders]) under directory."""
    steps, tmps = {}, []
    if not directory.is_dir():
        return steps, tmps
    for entry in directory.iterdir():
        if not entry.is_dir():
            continue
        if entry.name.isdigit():
            steps[int(entry.name)] = entry
        elif TMP_SUFFIX in entry.name:
            tmps.append(entry)
    return steps, sorted(tmps)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _json_item(step_dir: Path, item: str) -> tuple[Any, str | None]:
    """(value, None) of a JsonSave item's file, or (None, why it cannot be read)."""
    path = step_dir / item / JSON_ITEM_FILE
    try:
        return _read_json(path), None
    except FileNotFoundError:
        return None, f"item {item!r} is missing ({path} does not exist)"
    except (OSError, ValueError) as err:
        return None, f"item {item!r}: {path} is unreadable ({err})"


def step_problem(step_dir: Path) -> str | None:
    """Why step_dir is not a complete checkpoint of ours, or None when it is.

    The config item is optional (older checkpoints lack it), but when its folder
    exists it must hold a JSON object: a half-copied one is damage, not absence.
    """
    if not (step_dir / COMMIT_FILE).is_file():
        return f"no {COMMIT_FILE} (orbax never committed this save)"
    for item in ARRAY_ITEMS:
        meta = step_dir / item / PYTREE_METADATA_FILE
        if not meta.is_file():
            return f"item {item!r} is missing ({meta} does not exist)"
        try:
            if "tree_metadata" not in _read_json(meta):
                return f"item {item!r}: {meta} has no tree_metadata"
        except (OSError, ValueError) as err:
            return f"item {item!r}: {meta} is unreadable ({err})"
    train_meta, problem = _json_item(step_dir, TRAIN_META)
    if problem is not None:
        return problem
    if not isinstance(train_meta, dict) or train_meta.get("step") != int(step_dir.name):
        return f"item {TRAIN_META!r}: {step_dir / TRAIN_META / JSON_ITEM_FILE} does not record step {step_dir.name}"
    if (step_dir / CONFIG).exists():
        config, problem = _json_item(step_dir, CONFIG)
        if problem is not None:
            return problem
        if not isinstance(config, dict):
            return f"item {CONFIG!r}: {step_dir / CONFIG / JSON_ITEM_FILE} is not a JSON object"
    return None


def scan_steps(directory: str | os.PathLike) -> tuple[list[int], dict[Path, str]]:
    """(complete steps ascending, {incomplete folder: why}) of a checkpoints folder."""
    steps, tmps = _step_dirs(paths.as_path(directory))
    complete, broken = [], {}
    for step in sorted(steps):
        problem = step_problem(steps[step])
        if problem is None:
            complete.append(step)
        else:
            broken[steps[step]] = problem
    for tmp in tmps:
        broken[tmp] = "half-written (orbax's temporary folder; the save never finished)"
    return complete, broken


# ----------------------------------------------------------------------------- shardings
def _default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _abstract_with_shardings(abstract, shardings, what: str):
    """ShapeDtypeStructs carrying the target sharding of every leaf.

    Leaves that bring their own sharding keep it when shardings is None; otherwise
    the first local device is used (fine for one device; pass shardings for more).
    """
    if shardings is None:
        def leaf(x):
            sharding = getattr(x, "sharding", None) or _default_sharding()
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

        return jax.tree_util.tree_map(leaf, abstract)
    a_struct = jax.tree_util.tree_structure(abstract)
    s_struct = jax.tree_util.tree_structure(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
    if a_struct != s_struct:
        raise CheckpointError(f"{what}: the shardings tree does not match the abstract tree\n"
                              f"  abstract:  {a_struct}\n  shardings: {s_struct}")
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings,
        is_leaf=lambda s: isinstance(s, jax.sharding.Sharding),
    )


# ----------------------------------------------------------------------------- rng
def _rng_to_json(rng) -> dict | None:
    if rng is None:
        return None
    typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
    data = jax.random.key_data(rng) if typed else rng
    if isinstance(data, jax.Array) and not data.is_fully_addressable:
        # Every process holds the same (replicated) key; read the local copy.
        data = data.addressable_data(0)
    data = np.asarray(data)
    if data.dtype != np.uint32:
        raise CheckpointError(f"rng: expected a typed PRNG key or uint32 key data, got dtype {data.dtype}")
    return {"impl": str(jax.random.key_impl(rng)) if typed else None,
            "shape": list(data.shape), "key_data": data.ravel().tolist()}


def _rng_from_json(saved: dict | None):
    if saved is None:
        return None
    data = np.asarray(saved["key_data"], np.uint32).reshape(saved["shape"])
    if saved["impl"] is None:
        return jax.numpy.asarray(data)
    return jax.random.wrap_key_data(data, impl=saved["impl"])


# ----------------------------------------------------------------------------- Checkpointer
def _check_json(value: Any, what: str) -> str:
    """value as JSON text; a CheckpointError naming what when it is not JSON-serialisable."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{what} is not JSON-serialisable ({err})") from None


def _error_summary(err: BaseException, limit: int = 400) -> str:
    """One line for a restore error: orbax's outer message dumps a whole TensorStore
    spec, while the innermost cause says what is wrong (a short read, a tree mismatch)."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


@contextlib.contextmanager
def _absl_level(level: int):
    absl_logger = logging.getLogger("absl")
    previous = absl_logger.level
    absl_logger.setLevel(level)
    try:
        yield
    finally:
        absl_logger.setLevel(previous)


class Checkpointer:
    """Periodic, asynchronous, atomic checkpoints of one training run.

    directory: the run's ``<out>/checkpoints``. save_interval_steps: ``save`` writes
    only on multiples of it unless ``force=True``. max_to_keep: the newest N complete
    checkpoints are kept (None keeps all). async_save: ``save`` returns once arrays
    are copied to host memory and writes in the background; ``wait`` blocks until
    it is committed. read_only: never writes, renames or deletes anything (for
    inference and export). run_config: the run's resolved config (JSON-able), saved
    as the ``config`` item of every step unless ``save`` is given another.

    A writable Checkpointer moves incomplete step folders aside (renamed to
    ``<step>.incomplete-<time>``, never deleted) and lets orbax remove its own
    temporary folders, so neither is mistaken for a checkpoint or counted towards
    max_to_keep; every such folder is named in a warning.
    """

    def __init__(self, directory: str | os.PathLike, save_interval_steps: int = 1, max_to_keep: int | None = None,
                 async_save: bool = True, read_only: bool = False, run_config: Mapping[str, Any] | None = None):
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps={save_interval_steps} must be >= 1")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep={max_to_keep} must be >= 1 or None")
        self.directory = paths.absolute(directory)
        self.read_only = read_only
        if run_config is not None:
            _check_json(dict(run_config), f"{self.directory}: run_config")  # fail now, not at the first save
        self.run_config = run_config
        self._reported: set[Path] = set()  # incomplete folders already warned about
        self._set_aside: dict[Path, str] = {}  # damaged step folders moved aside at start
        self._unreadable_somewhere: dict[int, str] = {}  # steps some process could not read (agreed_steps)
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"{self.directory}: checkpoint folder does not exist")
        if not read_only:
            self._set_aside_incomplete()
        if read_only:
            # save_interval_steps=0 spares orbax's warning that read-only mode zeroes it.
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
        else:
            options = ocp.CheckpointManagerOptions(
                save_decision_policy=checkpoint_managers.FixedIntervalPolicy(save_interval_steps),
                preservation_policy=checkpoint_managers.LatestN(max_to_keep),
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            )
        if read_only:
            # orbax warns "Given directory is read only" on every read-only open, which is
            # what read_only asks for; keep it out of inference and export output.
            with _absl_level(logging.ERROR):
                self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEM_NAMES)
        else:
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEM_NAMES)

    def _set_aside_incomplete(self) -> None:
        _, broken = scan_steps(self.directory)
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for path, why in broken.items():
                self._reported.add(path)
                if TMP_SUFFIX in path.name:
                    log.warning("checkpoint folder %s is %s; orbax removes it", path, why)
                    continue
                aside = path.with_name(f"{path.name}.incomplete-{stamp}")
                paths.move(path, aside)
                self._set_aside[path] = f"{why}; moved to {aside.name}"
                log.warning("checkpoint folder %s is incomplete (%s); moved it to %s", path, why, aside.name)
        sync_processes("prorank_checkpoint_set_aside")

    def _set_aside_unrestorable(self, failed: Mapping[int, str]) -> None:
        """Move step folders that failed to restore aside, so their steps can be saved again.

        Otherwise orbax would skip the re-save of such a step as "already saved" and
        count the damaged folder towards max_to_keep.
        """
        if self.read_only or not failed:
            return
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in failed:
                path = self.directory / str(step)
                aside = path.with_name(f"{path.name}.unrestorable-{stamp}")
                paths.move(path, aside)
                log.warning("moved checkpoint folder %s, which could not be restored, to %s", path, aside.name)
        sync_processes("prorank_checkpoint_set_aside_unrestorable")
        self._manager.reload()  # it caches the step list

    # -- writing
    def save(self, step: int, *, params, opt_state, rng, data_state: Mapping[str, Any] | None,
             force: bool = False, config: Mapping[str, Any] | None = None) -> bool:
        """Start saving one step; True when a save was started.

        Skipped (False) when step is not a multiple of save_interval_steps (unless
        force) or is already saved. data_state and config (default: run_config; no
        config item when both are None) must be JSON-serialisable; they are checked
        before anything is written.
        """
        step = int(step)
        if self.read_only:
            raise CheckpointError(f"{self.directory}: opened read-only, cannot save step {step}")
        train_meta = {"format_version": FORMAT_VERSION, "step": step, "rng": _rng_to_json(rng),
                      "data_state": dict(data_state) if data_state is not None else None}
        _check_json(train_meta, f"step {step}: data_state")
        config = self.run_config if config is None else config
        items = {
            PARAMS: ocp.args.StandardSave(params),
            OPT_STATE: ocp.args.StandardSave(opt_state),
            TRAIN_META: ocp.args.JsonSave(train_meta),
        }
        if config is not None:
            # A JSON round trip makes tuples lists, so what is read back equals what was saved.
            items[CONFIG] = ocp.args.JsonSave(json.loads(_check_json(dict(config), f"step {step}: config")))
        if step in self._manager.all_steps():
            log.info("checkpoint of step %d already exists in %s; not saving it again", step, self.directory)
            return False
        return bool(self._manager.save(step, args=ocp.args.Composite(**items), force=force))

    def wait(self) -> None:
        """Block until every started save is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading
    def all_steps(self) -> list[int]:
        """Complete steps, ascending (folders are re-read, not cached)."""
        return scan_steps(self.directory)[0]

    def latest_step(self) -> int | None:
        """The newest complete step; None when there is nothing to resume from.

        Incomplete folders are skipped with a warning naming each. When none is
        complete, a damaged step folder is a CheckpointError naming it (a run would
        otherwise restart from scratch unnoticed); orbax temporary folders alone mean
        no save ever finished, so a writable Checkpointer returns None for them.
        """
        complete, broken = scan_steps(self.directory)
        for path in broken.keys() - self._reported:
            log.warning("checkpoint folder %s is skipped: %s", path, broken[path])
            self._reported.add(path)
        if complete:
            return complete[-1]
        fatal = dict(self._set_aside)
        fatal.update({p: why for p, why in broken.items() if self.read_only or TMP_SUFFIX not in p.name})
        if fatal:
            listing = "\n  ".join(f"{p}: {why}" for p, why in fatal.items())
            raise CheckpointError(
                f"{self.directory}: no complete checkpoint; incomplete folders:\n  {listing}\n"
                "delete them (or the whole folder) to start afresh"
            )
        return None

    def data_state(self, step: int) -> Mapping[str, Any] | None:
        """The data_state saved with a complete step, read from its JSON item alone (no arrays)."""
        meta, problem = _json_item(self.directory / str(int(step)), TRAIN_META)
        if problem is not None:
            raise CheckpointError(f"{self.directory / str(int(step))}: {problem}")
        return meta.get("data_state")

    def _resolve_step(self, step: int | None) -> int:
        if step is None:
            latest = self.latest_step()
            if latest is None:
                raise CheckpointError(f"{self.directory}: holds no checkpoints")
            return latest
        step_dir = self.directory / str(int(step))
        if not step_dir.is_dir():
            raise CheckpointError(f"{step_dir}: no checkpoint of step {step} (complete steps: {self.all_steps()})")
        problem = step_problem(step_dir)
        if problem is not None:
            raise CheckpointError(f"{step_dir}: incomplete checkpoint ({problem}); "
                                  f"complete steps: {self.all_steps()}")
        return int(step)

    def restore(self, step: int | None = None, *, abstract_params, abstract_opt_state=None,
                param_shardings=None, opt_state_shardings=None) -> dict[str, Any]:
        """Restore a step (default: the latest complete one) onto the given shardings.

        abstract_*: pytrees of jax.ShapeDtypeStruct (or arrays) giving structure,
        shapes and dtypes; *_shardings: matching pytrees of jax.sharding.Sharding.
        Arrays are read straight into those shardings, whatever mesh they were saved
        from. abstract_opt_state=None skips the optimizer state (inference).
        Returns {"step", "params", "opt_state", "rng", "data_state", "config"}; config
        is None for checkpoints saved without one.
        """
        step = self._resolve_step(step)
        step_dir = self.directory / str(step)
        items = {PARAMS: ocp.args.StandardRestore(_abstract_with_shardings(abstract_params, param_shardings, PARAMS)),
                 TRAIN_META: ocp.args.JsonRestore()}
        if (step_dir / CONFIG).is_dir():
            items[CONFIG] = ocp.args.JsonRestore()
        if abstract_opt_state is not None:
            items[OPT_STATE] = ocp.args.StandardRestore(
                _abstract_with_shardings(abstract_opt_state, opt_state_shardings, OPT_STATE))
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # orbax raises many types; name the folder whatever it was
            if jax.process_count() > 1:
                # orbax's restore ends in a barrier the other processes wait in when the read
                # failed here only (a file damaged on this host): meet it, so that their
                # barrier does not pair with this process's next collective and blame their
                # intact step (restore_latest then agrees on the failure).
                sync_processes(ORBAX_RESTORE_BARRIER)
            raise CheckpointError(f"{step_dir}: could not be restored: {type(err).__name__}: {err}") from err
        meta = restored[TRAIN_META]
        return {
            "step": int(meta["step"]),
            "params": restored[PARAMS],
            "opt_state": restored[OPT_STATE] if abstract_opt_state is not None else None,
            "rng": _rng_from_json(meta.get("rng")),
            "data_state": meta.get("data_state"),
            "config": restored[CONFIG] if CONFIG in items else None,
        }

    def restore_config(self, step: int | None = None) -> dict | None:
        """The resolved config saved with a step (default: the latest complete one);
        None for checkpoints saved without one."""
        step = self._resolve_step(step)
        if not (self.directory / str(step) / CONFIG).is_dir():
            return None
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))
        except Exception as err:  # orbax raises many types; name the folder whatever it was
            raise CheckpointError(f"{self.directory / str(step) / CONFIG}: could not be restored: "
                                  f"{type(err).__name__}: {err}") from err
        return restored[CONFIG]

    def agreed_steps(self) -> list[int]:
        """The complete steps every process can read, ascending, the same list on every process
        (a collective; restore_agreement.py says why). A step complete on some processes only is
        named in a warning with the process that cannot read it and why; when no step is
        complete everywhere but some process has one or a damaged folder, a CheckpointError
        naming them is raised on every process."""
        from prorank_jax import restore_agreement

        try:
            self.latest_step()  # warns about, or refuses, this process's damaged folders
            problem = None
        except CheckpointError as err:
            problem = str(err)
        complete, broken = scan_steps(self.directory)
        verdict = restore_agreement.agreed(restore_agreement.local_view(
            complete, {path.name: why for path, why in broken.items()}, problem))
        for step, why in verdict.unreadable.items():
            log.warning("checkpoint step %d in %s is %s; every process resumes from a step all of them read",
                        step, self.directory, why)
        if verdict.problem is not None:
            raise CheckpointError(f"{self.directory}: {verdict.problem}")
        self._unreadable_somewhere = verdict.unreadable
        return verdict.steps

    def restore_latest(self, steps: list[int] | None = None, **restore_kwargs) -> dict[str, Any] | None:
        """restore() of the newest complete step that restores; None when there is none to resume from.

        steps: agreed_steps() when the caller already has them (else computed here). A step
        whose metadata is intact can still fail to read (a truncated array file); it is
        named in a warning with the error and the previous complete step is tried, and so
        on. Once one restores, a writable Checkpointer moves the failed newer folders aside
        (and those some process could not read). Every process must call this: a step counts
        as restored only when it restored on all of them, so they resume from the same
        step. When no step restores, a CheckpointError lists each step and its error.
        """
        steps = (self.agreed_steps() if steps is None else list(steps))[::-1]
        if not steps:
            return None
        failed: dict[int, str] = {step: why for step, why in self._unreadable_somewhere.items()
                                  if step > steps[0]}
        for i, step in enumerate(steps):
            try:
                restored, why = self.restore(step, **restore_kwargs), None
            except CheckpointError as err:
                restored, why = None, _error_summary(err)
            if any_process(why is not None):
                failed[step] = why or "another process could not restore it"
                then = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no earlier complete step"
                log.warning("checkpoint folder %s could not be restored (%s); %s",
                            self.directory / str(step), failed[step], then)
                continue
            self._set_aside_unrestorable(failed)
            return restored
        listing = "\n  ".join(f"{self.directory / str(step)}: {why}" for step, why in failed.items())
        raise CheckpointError(f"{self.directory}: no complete checkpoint could be restored; tried, newest first:\n"
                              f"  {listing}\n"
                              "the same error for every step usually means the model or optimizer differs "
                              "from the one that saved them")


# ----------------------------------------------------------------------------- data state
def data_state_to_save(local_iterator_state: Mapping[str, Any] | None, skipped_updates: int) -> dict:
    """The data_state a training checkpoint records: every process's iterator state, in
    process order, and the process count that saved them. A collective (all processes
    call it at the same step); each grain iterator reads only its own process's shard, so
    one process's state alone cannot resume the others."""
    return {"iterators": allgather_json(local_iterator_state or {}), "process_count": jax.process_count(),
            "skipped_updates": int(skipped_updates)}


def iterator_state_of_this_process(data_state: Mapping[str, Any] | None, step_dir: str | os.PathLike,
                                   process_index: int, process_count: int) -> dict | None:
    """This process's saved iterator state ({} or None when none was saved).

    A resume must run on the process count that saved the step: each process's state
    is a position in its own shard, and the shards (and so the data order) are a
    function of the process count. The answer is the same on every process (all read
    the same train_meta), so a refusal happens everywhere before any collective.
    """
    data_state = data_state or {}
    if "iterators" in data_state:
        saved = int(data_state.get("process_count", len(data_state["iterators"])))
        states = data_state["iterators"]
    elif data_state.get("iterator"):
        saved, states = 1, [data_state["iterator"]]  # written before every process's state was kept
    else:
        return None
    if saved != process_count or len(states) != process_count:
        raise CheckpointError(
            f"{step_dir}: saved by a run of {saved} process(es), resumed with {process_count}; the data "
            f"iterators' positions belong to the {saved}-process data order. Resume with {saved} processes "
            f"(the same hosts/--num-processes), or start a new run in another out_dir with model.path set to "
            f"this run folder (its weights, a fresh data order and optimizer)"
        )
    return states[process_index] or None
