"""YAML run configs with `key=value` overrides, resolved into the library's config types.

A run config is a YAML mapping of sections (model, data, optimizer, loop, mesh and a
stage's own section). Overrides use dotted keys (`optimizer.learning_rate=3e-5`);
their values are parsed as YAML scalars. Every section becomes one frozen dataclass,
and an unknown key anywhere is an error that names the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class RunConfigError(ValueError):
    """A run config file or override is malformed."""


# PyYAML follows YAML 1.1, where "3e-5" (no dot) is a string; everyone writes it as a number.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml_numbers(value: Any) -> Any:
    """`value` with every string that is a float in exponent notation turned into that float."""
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: _yaml_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_numbers(v) for v in value]
    return value


def config_path(name_or_path: str | os.PathLike) -> Path:
    """A file path, or the name of a bundled config (launch/configs/NAME.yaml)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    bundled = CONFIG_DIR / f"{name_or_path}.yaml"
    if bundled.exists():
        return bundled
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise RunConfigError(f"{name_or_path}: no such config file (bundled configs: {names})")


def load_config(name_or_path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    path = config_path(name_or_path)
    try:
        raw = _yaml_numbers(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RunConfigError(f"{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise RunConfigError(f"{path}: expected a mapping of sections at the top level")
    raw = dict(raw)
    raw["_source"] = str(path)
    for item in overrides:
        apply_override(raw, item)
    return raw


def apply_override(config: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise RunConfigError(f"override {item!r}: expected KEY=VALUE, e.g. optimizer.learning_rate=3e-5")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = _yaml_numbers(yaml.safe_load(text)) if text.strip() else None
    except yaml.YAMLError as err:
        raise RunConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
    node = config
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None and depth > 0:
            # A new key inside a section's mapping field (grpo.reward_weights.format=...) would
            # replace that field's whole default mapping with this one entry, silently.
            inner = ".".join(parts[: depth + 1])
            raise RunConfigError(
                f"override {item!r}: {inner} is not set in the config file, so this would replace its "
                f"whole default with one entry; give the whole mapping, e.g. {inner}={{key: value, ...}}"
            )
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RunConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def section(config: Mapping[str, Any], name: str, cls: type, **extra: Any):
    """Build dataclass `cls` from config[name]; unknown keys name the file and key."""
    values = dict(config.get(name) or {})
    if not isinstance(values, dict):
        raise RunConfigError(f"{config.get('_source', 'config')}: section {name!r} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise RunConfigError(
            f"{config.get('_source', 'config')}: unknown key(s) {[f'{name}.{k}' for k in unknown]}; "
            f"{name} accepts {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    for key, value in list(values.items()):
        values[key] = _coerce(hints.get(key), value)
    values.update(extra)
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise RunConfigError(f"{config.get('_source', 'config')}: section {name!r}: {err}") from None


def _coerce(hint, value):
    """YAML lists become tuples where the dataclass field is a tuple (frozen, hashable);
    numbers YAML reads as strings ("3e-3" is not a YAML 1.1 float) become floats."""
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # the dataclass's own validation names the field
    origin = typing.get_origin(hint)
    if isinstance(value, list) and (origin is tuple or hint is tuple):
        return tuple(value)
    if origin is typing.Union and isinstance(value, list):
        if any(typing.get_origin(a) is tuple or a is tuple for a in typing.get_args(hint)):
            return tuple(value)
    return value


def resolved(config: Mapping[str, Any], **sections_: Any) -> dict[str, Any]:
    """The fully resolved config (dataclasses expanded with their defaults) as plain data."""
    out: dict[str, Any] = {k: v for k, v in config.items() if not k.startswith("_")}
    for name, obj in sections_.items():
        out[name] = _plain(dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj)
    return out


def _plain(value):
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def print_resolved(config: Mapping[str, Any]) -> None:
    print("resolved config:")
    print(yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False).rstrip())
