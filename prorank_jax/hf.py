"""Hugging Face checkpoints <-> (ModelConfig, params), without torch.

The conversion is one name table (HF tensor name -> our param path, and whether
the matrix is transposed). Layer tensors are stacked on a leading axis because
the decoder scans over layers. safetensors files are read and written here
directly (the format is a JSON header plus raw little-endian buffers) so that
bfloat16 works through ml_dtypes and no framework is needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping

import jax
import ml_dtypes
import numpy as np

from prorank_jax.config import ModelConfig
from prorank_jax.dtypes import dtype_of
from prorank_jax import paths
from prorank_jax.files import staged_dir

# HF tensor suffix under "model.layers.{i}." -> (path under params["model"]["layers"], transposed)
LAYER_TABLE: dict[str, tuple[tuple[str, ...], bool]] = {
    "self_attn.q_proj.weight": (("self_attn", "q_proj", "kernel"), True),
    "self_attn.k_proj.weight": (("self_attn", "k_proj", "kernel"), True),
    "self_attn.v_proj.weight": (("self_attn", "v_proj", "kernel"), True),
    "self_attn.o_proj.weight": (("self_attn", "o_proj", "kernel"), True),
    "self_attn.q_proj.bias": (("self_attn", "q_proj", "bias"), False),
    "self_attn.k_proj.bias": (("self_attn", "k_proj", "bias"), False),
    "self_attn.v_proj.bias": (("self_attn", "v_proj", "bias"), False),
    "self_attn.o_proj.bias": (("self_attn", "o_proj", "bias"), False),
    "self_attn.q_norm.weight": (("self_attn", "q_norm", "weight"), False),
    "self_attn.k_norm.weight": (("self_attn", "k_norm", "weight"), False),
    "mlp.gate_proj.weight": (("mlp", "gate_proj", "kernel"), True),
    "mlp.up_proj.weight": (("mlp", "up_proj", "kernel"), True),
    "mlp.down_proj.weight": (("mlp", "down_proj", "kernel"), True),
    "mlp.gate_proj.bias": (("mlp", "gate_proj", "bias"), False),
    "mlp.up_proj.bias": (("mlp", "up_proj", "bias"), False),
    "mlp.down_proj.bias": (("mlp", "down_proj", "bias"), False),
    "input_layernorm.weight": (("input_layernorm", "weight"), False),
    "post_attention_layernorm.weight": (("post_attention_layernorm", "weight"), False),
}
# Tensors outside the layers: HF name -> (path in params, transposed)
GLOBAL_TABLE: dict[str, tuple[tuple[str, ...], bool]] = {
    "model.embed_tokens.weight": (("model", "embed_tokens", "embedding"), False),
    "model.norm.weight": (("model", "norm", "weight"), False),
    "lm_head.weight": (("lm_head", "kernel"), True),
}
# Buffers some older checkpoints carry that are recomputed from the config.
_RECOMPUTED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)$")

_ST_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(bool),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)


class HFFolderError(ValueError):
    """An HF folder or safetensors file does not hold what its config says (checkpoint.CheckpointError is
    the orbax run folder's error)."""


# ----------------------------------------------------------------------------- safetensors
def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as numpy arrays (memory-mapped, read-only)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise HFFolderError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
        (header_len,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise HFFolderError(f"{path}: unreadable safetensors header ({err})") from None
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, info in header.items():
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise HFFolderError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        if end > data.size:
            raise HFFolderError(f"{path}: tensor {name!r} ends at byte {end} but the file holds {data.size}")
        tensors[name] = data[start:end].view(dtype).reshape(info["shape"])
    return tensors


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray]) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    arrays = {}
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in _ST_NAMES:
            raise HFFolderError(f"tensor {name!r}: dtype {arr.dtype} cannot be written to safetensors")
        header[name] = {"dtype": _ST_NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays[name] = arr
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * ((-len(blob)) % 8)  # keeps tensor buffers 8-byte aligned, as the format recommends
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in sorted(arrays):
            f.write(arrays[name].tobytes())


# ----------------------------------------------------------------------------- names
def expected_hf_names(config: ModelConfig) -> dict[str, tuple[int | None, tuple[str, ...], bool, tuple[int, ...]]]:
    """Every HF tensor the config implies: name -> (layer or None, our path, transposed, HF shape)."""
    c = config
    d, hd = c.hidden_size, c.head_dim
    q_out, kv_out = c.num_attention_heads * hd, c.num_key_value_heads * hd
    layer_shapes = {
        "self_attn.q_proj.weight": (q_out, d), "self_attn.k_proj.weight": (kv_out, d),
        "self_attn.v_proj.weight": (kv_out, d), "self_attn.o_proj.weight": (d, q_out),
        "mlp.gate_proj.weight": (c.intermediate_size, d), "mlp.up_proj.weight": (c.intermediate_size, d),
        "mlp.down_proj.weight": (d, c.intermediate_size),
        "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
    }
    if c.attention_bias:
        layer_shapes.update({"self_attn.q_proj.bias": (q_out,), "self_attn.k_proj.bias": (kv_out,),
                             "self_attn.v_proj.bias": (kv_out,)})
    if c.o_proj_bias:
        layer_shapes["self_attn.o_proj.bias"] = (d,)
    if c.mlp_bias:
        layer_shapes.update({"mlp.gate_proj.bias": (c.intermediate_size,), "mlp.up_proj.bias": (c.intermediate_size,),
                             "mlp.down_proj.bias": (d,)})
    if c.qk_norm:
        layer_shapes.update({"self_attn.q_norm.weight": (hd,), "self_attn.k_norm.weight": (hd,)})
    names = {}
    for i in range(c.num_hidden_layers):
        for suffix, shape in layer_shapes.items():
            path, transposed = LAYER_TABLE[suffix]
            names[f"model.layers.{i}.{suffix}"] = (i, ("model", "layers") + path, transposed, shape)
    globals_ = {"model.embed_tokens.weight": (c.vocab_size, d), "model.norm.weight": (d,)}
    if not c.tie_word_embeddings:
        globals_["lm_head.weight"] = (c.vocab_size, d)
    for name, shape in globals_.items():
        path, transposed = GLOBAL_TABLE[name]
        names[name] = (None, path, transposed, shape)
    return names


# ----------------------------------------------------------------------------- load
def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise HFFolderError(f"{index}: expected a JSON object with a 'weight_map' ({err})") from None
        files = sorted({folder / f for f in weight_map.values()})
        absent = [str(f) for f in files if not f.exists()]
        if absent:
            raise HFFolderError(f"{index}: lists shard files that do not exist: {absent}")
        return files
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    if (folder / "pytorch_model.bin").exists():
        raise HFFolderError(f"{folder}: only pytorch_model.bin found; convert it to safetensors first")
    raise HFFolderError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def load(folder: str | os.PathLike, **config_overrides: Any) -> tuple[ModelConfig, dict]:
    """Load an HF Qwen2/Qwen3/Llama checkpoint folder as (ModelConfig, numpy params pytree).

    config_overrides set fields that are ours rather than HF's (dtype, param_dtype,
    remat). Weights are cast to param_dtype. Missing, unexpected or mis-shaped
    tensors raise a HFFolderError that lists all of them.
    """
    folder = Path(folder)
    config = ModelConfig.from_hf(folder, **config_overrides)
    tensors: dict[str, np.ndarray] = {}
    for file in _weight_files(folder):
        tensors.update(read_safetensors(file))
    return config, params_from_hf_tensors(tensors, config, source=str(folder))


def params_from_hf_tensors(tensors: Mapping[str, np.ndarray], config: ModelConfig, source: str = "checkpoint") -> dict:
    expected = expected_hf_names(config)
    tensors = {k: v for k, v in tensors.items() if not _RECOMPUTED.match(k)}
    tied_head = tensors.get("lm_head.weight") if config.tie_word_embeddings else None
    present = set(tensors) - ({"lm_head.weight"} if tied_head is not None else set())
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    misshaped = sorted(
        f"{n}: {tuple(tensors[n].shape)} (expected {expected[n][3]})"
        for n in present & set(expected)
        if tuple(tensors[n].shape) != expected[n][3]
    )
    if missing or unexpected or misshaped:
        parts = [f"{source}: checkpoint does not match its config"]
        if missing:
            parts.append(f"missing tensors ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected tensors ({len(unexpected)}): {unexpected}")
        if misshaped:
            parts.append(f"mis-shaped tensors ({len(misshaped)}): {misshaped}")
        raise HFFolderError("\n  ".join(parts))
    if tied_head is not None and not np.array_equal(
        np.asarray(tied_head, np.float32), np.asarray(tensors["model.embed_tokens.weight"], np.float32)
    ):
        raise HFFolderError(
            f"{source}: tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight"
        )

    dtype = np.dtype(dtype_of(config.param_dtype))
    params: dict = {}
    per_layer: dict[tuple[str, ...], list] = {}
    for name, (layer, path, transposed, _) in expected.items():
        arr = np.asarray(tensors[name])
        arr = (arr.T if transposed else arr).astype(dtype)
        if layer is None:
            _set(params, path, arr)
        else:
            per_layer.setdefault(path, [None] * config.num_hidden_layers)[layer] = arr
    for path, arrays in per_layer.items():
        _set(params, path, np.stack(arrays))
    return params


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


# ----------------------------------------------------------------------------- save
def hf_tensors_from_params(params, config: ModelConfig, dtype: str | None = None) -> dict[str, np.ndarray]:
    """The HF state dict (name -> numpy array) of params; dtype defaults to param_dtype."""
    out_dtype = np.dtype(dtype_of(dtype or config.param_dtype))
    host = jax.device_get(params)
    tensors = {}
    for name, (layer, path, transposed, _) in expected_hf_names(config).items():
        arr = np.asarray(_get(host, path))
        if layer is not None:
            arr = arr[layer]
        tensors[name] = np.ascontiguousarray((arr.T if transposed else arr).astype(out_dtype))
    return tensors


def _shard(tensors: Mapping[str, np.ndarray], max_shard_bytes: int) -> list[dict[str, np.ndarray]]:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    return shards


def save(
    params,
    config: ModelConfig,
    out_dir: str | os.PathLike,
    *,
    tokenizer_dir: str | os.PathLike | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 1024**3,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write an HF folder that AutoModelForCausalLM.from_pretrained loads.

    The folder is assembled under a temporary name beside out_dir and renamed into
    place, so a reader never sees half of it. extra_files maps file name -> text
    (a model card, for example).
    """
    out_dir = paths.as_path(out_dir)
    with staged_dir(out_dir) as tmp:
        hf_config = config.to_hf()
        if dtype:
            hf_config["dtype"] = dtype
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        generation = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf_config[k] is not None}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        shards = _shard(hf_tensors_from_params(params, config, dtype), max_shard_bytes)
        if len(shards) == 1:
            write_safetensors(tmp / "model.safetensors", shards[0])
        else:
            weight_map, total = {}, 0
            for i, shard in enumerate(shards, 1):
                fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                write_safetensors(tmp / fname, shard)
                for name, arr in shard.items():
                    weight_map[name] = fname
                    total += arr.nbytes
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        if tokenizer_dir is not None:
            copied = copy_tokenizer_files(tokenizer_dir, tmp)
            if not copied:
                raise HFFolderError(f"{tokenizer_dir}: no tokenizer files found (looked for {TOKENIZER_FILES})")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return out_dir


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    src, dst = Path(src), Path(dst)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied
