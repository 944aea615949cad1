"""Optional Weights & Biases logging of a run's metrics (loop.wandb: {project: ..., ...}).

Off unless a config names a project. wandb is imported only then, so the runtime does not
depend on it (it is pinned in requirements-test.txt, where the offline-mode test runs).
The keys are passed to wandb.init as they are; W&B's environment variables apply as
usual (WANDB_MODE=offline writes the run under <dir>/wandb for a later `wandb sync`,
WANDB_API_KEY logs in). The run's resolved config (run_config.json) becomes W&B's config.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

log = logging.getLogger(__name__)

WANDB_REQUIREMENT = "wandb==0.31.0"

# The wandb.init arguments a config may give, with the type each must have.
KEYS: Mapping[str, type | tuple[type, ...]] = {
    "project": str, "entity": str, "name": str, "group": str, "job_type": str, "notes": str,
    "tags": (list, tuple), "mode": str, "id": str, "resume": str, "dir": str,
}
MODES = ("online", "offline", "disabled")


def check_wandb_config(value: Any) -> dict[str, Any] | None:
    """loop.wandb as a plain dict (None: off), or a ValueError naming the key at fault."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"loop.wandb must be a mapping like {{project: NAME}}, not {value!r}")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {[f'loop.wandb.{k}' for k in unknown]}; loop.wandb accepts {sorted(KEYS)}")
    if not isinstance(value.get("project"), str) or not value["project"]:
        raise ValueError("loop.wandb.project is required: the W&B project name (a string)")
    for key, kind in KEYS.items():
        if key in value and value[key] is not None and not isinstance(value[key], kind):
            raise ValueError(f"loop.wandb.{key}={value[key]!r} must be a {getattr(kind, '__name__', 'list')}")
    if value.get("mode") is not None and value["mode"] not in MODES:
        raise ValueError(f"loop.wandb.mode={value['mode']!r} must be one of {list(MODES)}")
    if any(not isinstance(t, str) for t in value.get("tags") or ()):
        raise ValueError(f"loop.wandb.tags={value['tags']!r} must be a list of strings")
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in value.items()}


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise RuntimeError(f"loop.wandb is set but wandb is not installed: pip install {WANDB_REQUIREMENT}") from None
    return wandb


class WandbRun:
    """One W&B run that metrics rows are logged to (process 0 only: the caller decides)."""

    def __init__(self, settings: Mapping[str, Any], out_dir: str | os.PathLike, run_config: Mapping | None = None):
        wandb = _import_wandb()
        kwargs = dict(settings)
        # W&B keeps its files on local disk; a local run folder holds them, a bucket cannot.
        if "dir" not in kwargs and "://" not in str(out_dir):
            kwargs["dir"] = str(out_dir)
        if kwargs.get("dir"):
            os.makedirs(kwargs["dir"], exist_ok=True)
        self.run = wandb.init(config=dict(run_config or {}), **kwargs)
        log.info("logging to W&B project %s, run %s", settings["project"], self.run.id)

    def log_row(self, row: Mapping[str, Any]) -> None:
        """A metrics.jsonl row, at its step (W&B merges rows logged at the same step)."""
        values = {k: v for k, v in row.items() if k not in ("step", "time")}
        if values:
            self.run.log(values, step=int(row["step"]))

    def close(self) -> None:
        self.run.finish()


def read_run_config(out_dir: str | os.PathLike) -> dict | None:
    """The run's resolved config, if its folder has run_config.json."""
    from etils import epath

    from prorank_jax.run_folder import RUN_CONFIG_FILE

    path = epath.Path(str(out_dir)) / RUN_CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
