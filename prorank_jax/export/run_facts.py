"""What a run folder says about its training, for the model card: metrics, stage, base model.

Read-only and forgiving where a run can legitimately be untidy (a metrics.jsonl whose
last line a killed run left half-written is skipped with a warning); anything else that
does not parse is an ExportError naming the file and line.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from prorank_jax import paths
from prorank_jax.export.errors import ExportError
from prorank_jax.run_folder import RUN_CONFIG_FILE

log = logging.getLogger(__name__)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{path}: not valid JSON ({err})") from None


def read_metrics_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl rows; a truncated last line (a run killed mid-write) is skipped with a warning."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                log.warning("%s:%d: unreadable last line skipped (%s)", path, number, err)
                continue
            raise ExportError(f"{path}:{number}: not valid JSON ({err})") from None
    return rows


def final_metrics(rows: Sequence[Mapping[str, Any]], step: int | None = None) -> tuple[int | None, dict, int | None, dict]:
    """(train step, last training metrics, eval step, last eval metrics) at or before `step`."""
    train: tuple[int | None, dict] = (None, {})
    evals: tuple[int | None, dict] = (None, {})
    for row in rows:
        s = row.get("step")
        if step is not None and isinstance(s, int) and s > step:
            continue
        values = {k: v for k, v in row.items() if k not in ("step", "time") and isinstance(v, (int, float))}
        ev = {k[len("eval/"):]: v for k, v in values.items() if k.startswith("eval/")}
        tr = {k: v for k, v in values.items() if not k.startswith("eval/")}
        if tr:
            train = (s, tr)
        if ev:
            evals = (s, ev)
    return train[0], train[1], evals[0], evals[1]


def stage_of(run_config: Mapping[str, Any]) -> str:
    if "grpo" in run_config:
        return "stage 1: GRPO prompt warmup"
    if any(k in run_config for k in ("score", "scoring", "loss", "losses", "stage2")):
        return "stage 2: score learning"
    return "unknown stage"


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HF_CACHE = re.compile(r"models--([^/]+)--([^/]+)")


def base_model_of(run_config: Mapping[str, Any], seen: int = 0) -> str | None:
    """The hub id the run started from, when the run config says (a run folder is followed)."""
    model = run_config.get("model") or {}
    path = model.get("path") if isinstance(model, Mapping) else None
    if not path or seen > 4:
        return None
    path = str(path)
    cache = _HF_CACHE.search(path)
    if cache:
        return f"{cache.group(1)}/{cache.group(2)}"
    local = paths.as_path(path)
    if (local / RUN_CONFIG_FILE).is_file():
        try:
            return base_model_of(json.loads((local / RUN_CONFIG_FILE).read_text()), seen + 1)
        except json.JSONDecodeError:
            return None
    if local.exists():
        config = local / "config.json"
        if config.is_file():
            try:
                name = json.loads(config.read_text()).get("_name_or_path")
            except json.JSONDecodeError:
                name = None
            if isinstance(name, str) and HUB_ID.match(name) and not Path(name).exists():
                return name
        return None
    return path if HUB_ID.match(path) else None
