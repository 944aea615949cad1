"""A run folder's metadata and its model for inference: run_config.json, model_config.json and
tokenizer/ written once (the originals kept on resume), and a step's params read back with
the model's config and tokenizer. The checkpoint steps themselves are prorank_jax.checkpoint's."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import jax

from prorank_jax import hf, paths
from prorank_jax.checkpoint import Checkpointer, CheckpointError
from prorank_jax.config import COMPUTE_DTYPES, ModelConfig
from prorank_jax.files import atomic_text_writer, staged_dir
from prorank_jax.run_folder import (CHECKPOINTS_DIR, MODEL_CONFIG_FILE, RUN_CONFIG_FILE, TOKENIZER_DIR,
                                    missing_run_folder_parts)

log = logging.getLogger(__name__)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{path}: exists but is not valid JSON ({err})") from None


def _differing_keys(old: Mapping, new: Mapping) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _write_json_once(path: Path, value: Mapping, *, must_match: bool) -> None:
    """Write path unless it exists; an existing file is kept (the run's original)."""
    # A JSON round trip makes tuples lists, so the comparison is like for like.
    value = json.loads(json.dumps(value))
    if not path.exists():
        with atomic_text_writer(path) as f:
            f.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
        return
    old = _read_json(path)
    diff = _differing_keys(old, value)
    if diff and must_match:
        raise CheckpointError(f"{path}: this run folder was trained with a different model "
                              f"(fields differ: {diff}); use a new output folder")
    if diff:
        log.warning("%s: keeping the run's original config; the resumed run differs in %s", path, diff)


def write_run_metadata(out_dir: str | os.PathLike, *, resolved_config: Mapping[str, Any],
                       model_config: Mapping[str, Any], tokenizer_dir: str | os.PathLike | None) -> None:
    """Write run_config.json, model_config.json and tokenizer/ into a run folder, once.

    Each file appears whole (files.atomic_text_writer and staged_dir: a rename on local
    disk, one object or a marker deleted last in a bucket). On resume the originals are kept: a
    different model config is an error, a different run config a warning.
    """
    out_dir = paths.as_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json_once(out_dir / MODEL_CONFIG_FILE, model_config, must_match=True)
    _write_json_once(out_dir / RUN_CONFIG_FILE, resolved_config, must_match=False)
    if tokenizer_dir is not None and not (out_dir / TOKENIZER_DIR).is_dir():
        _copy_tokenizer(paths.local_folder(tokenizer_dir), out_dir / TOKENIZER_DIR)


def _copy_tokenizer(src: Path, dst: Path) -> None:
    with staged_dir(dst) as tmp:
        if not hf.copy_tokenizer_files(src, tmp):
            raise CheckpointError(f"{src}: no tokenizer files found (looked for {hf.TOKENIZER_FILES})")


def _check_run_folder(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run folder does not exist")
    missing = missing_run_folder_parts(run_dir)
    if missing:
        raise CheckpointError(f"{run_dir}: not a prorank run folder (missing {', '.join(missing)})")


def load_for_inference(run_dir: str | os.PathLike, step: int | None = None, *,
                       shardings=None) -> tuple[ModelConfig, Any, Path | None]:
    """(ModelConfig, params, tokenizer folder or None) of a run folder's checkpoint.

    Only params are read (no optimizer state). step defaults to the latest complete
    checkpoint. Params land on the first local device unless shardings (a pytree of
    jax.sharding.Sharding matching the params) says otherwise. param_dtype comes from
    model_config.json's "dtype"; the compute dtype is left at its default.
    """
    from prorank_jax.model import init_params  # the model module is heavy; load it only when needed

    run_dir = paths.as_path(run_dir)
    _check_run_folder(run_dir)
    hf_config = _read_json(run_dir / MODEL_CONFIG_FILE)
    dtype = hf_config.get("dtype") or hf_config.get("torch_dtype")
    config = ModelConfig.from_hf(hf_config, **({"param_dtype": dtype} if dtype in COMPUTE_DTYPES else {}))
    abstract = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    checkpointer = Checkpointer(run_dir / CHECKPOINTS_DIR, read_only=True)
    try:
        restored = checkpointer.restore(step, abstract_params=abstract, param_shardings=shardings)
    finally:
        checkpointer.close()
    tokenizer = run_dir / TOKENIZER_DIR
    # transformers loads a tokenizer from local files only: a bucket's tokenizer/ is downloaded.
    return config, restored["params"], paths.local_folder(tokenizer) if tokenizer.is_dir() else None
