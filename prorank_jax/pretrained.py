"""Where a model comes from: an HF folder, one of our run folders, the bundled warm start,
or a random init.

Both training stages, the Reranker, the exporter, `--dry-run` and `--compile-for` resolve
models here (what a run folder is: prorank_jax.run_folder), so that "a path" means the same
thing everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax

from prorank_jax import hf, model, paths
from prorank_jax.bundled import bundled_data_dir, bundled_tokenizer_dir
from prorank_jax.config import ModelConfig
from prorank_jax.run_folder import (CHECKPOINTS_DIR, HF_FOLDER, RUN_FOLDER, RUN_FOLDER_FILES, folder_kind,
                                    has_tokenizer, own_tokenizer_dir)
from prorank_jax.run_folder import is_run_folder  # noqa: F401  (callers that load models ask it here too)

BUNDLED = "bundled"
# model.path of the bundled self-supervised warm start of the tiny model (an HF folder
# without tokenizer files; it pairs with the bundled tokenizer). How it was made:
# prorank_jax/data/bundled/README.md.
BUNDLED_WARM_START = "bundled_warm_start"


def bundled_warm_start_dir() -> Path:
    return bundled_data_dir() / "warm_start"


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """The model a run starts from.

    path: an HF checkpoint folder or a prorank run folder (its latest checkpoint); when
      None, a random model is built from `config`; "bundled_warm_start" is the tiny model
      after inverse-cloze pretraining on the bundled corpus.
    config: an HF config.json (file or folder) for the random init; "bundled" is the tiny
      bundled Qwen2 config.
    tokenizer: a tokenizer folder; else the checkpoint's own tokenizer files; "bundled" (and
      the default for a random init or the bundled warm start) falls back to the bundled
      tokenizer when the checkpoint has none.
    dtype / param_dtype / remat: compute dtype, weight dtype, rematerialisation policy.
    attn_implementation: how attention is computed ("auto", "xla", "blockwise", "rowwise", "cudnn";
      see prorank_jax/attention.py).
    init_seed / init_std: seed and standard deviation of the random init's normal weights
      (0.02 is HF's initializer_range; the tiny model trained from scratch on inverse-cloze
      groups leaves its initial plateau much sooner at 0.1, see launch/configs/pretrain_tiny.yaml).
    """

    path: str | None = None
    config: str = BUNDLED
    tokenizer: str | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    attn_implementation: str = "auto"
    init_seed: int = 0
    init_std: float = 0.02

    def __post_init__(self):
        if isinstance(self.init_std, bool) or not isinstance(self.init_std, (int, float)) or not self.init_std > 0:
            raise ValueError(f"model.init_std must be a positive number, got {self.init_std!r}")

    def overrides(self) -> dict[str, Any]:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype, remat=self.remat,
                    attn_implementation=self.attn_implementation)


def load_pretrained(path: str | Path, step: int | None = None, **overrides: Any) -> tuple[ModelConfig, Any, Path | None]:
    """(ModelConfig, params, tokenizer folder or None) from an HF folder or a run folder
    (`step` picks a run folder's checkpoint, default the latest)."""
    path = paths.as_path(path)
    kind = model_folder_kind(path)
    if kind == RUN_FOLDER:
        from prorank_jax import run_folder_io

        config, params, tokenizer_dir = run_folder_io.load_for_inference(path, step=step)
        if overrides:
            config = config.replace(**overrides)
            params = jax.tree_util.tree_map(lambda x: x.astype(model.dtype_of(config.param_dtype)), params)
        return config, params, tokenizer_dir
    path = paths.local_folder(path)  # a bucket's HF folder is downloaded whole (safetensors reads files)
    config, params = hf.load(path, **overrides)
    return config, params, path if has_tokenizer(path) else None


def model_folder_kind(path: str | Path) -> str:
    """RUN_FOLDER or HF_FOLDER (run_folder.folder_kind) of a model folder, read without its
    weights; a FileNotFoundError when it is neither."""
    kind = folder_kind(path)
    if kind is None:
        raise FileNotFoundError(
            f"{path}: neither an HF checkpoint folder (config.json + safetensors) nor a prorank run folder "
            f"({' + '.join(RUN_FOLDER_FILES)} + {CHECKPOINTS_DIR}/)"
        )
    return kind


def source_folder(source: ModelSource) -> Path | None:
    """The folder model.path names (the bundled warm start's for "bundled_warm_start"); None for a random init."""
    if not source.path:
        return None
    return bundled_warm_start_dir() if source.path == BUNDLED_WARM_START else paths.as_path(source.path)


def random_init_config_file(source: ModelSource) -> Path:
    """The config.json a random init (model.path null) is built from."""
    cfg_path = bundled_data_dir() / "tiny_model.json" if source.config == BUNDLED else paths.as_path(source.config)
    return cfg_path / "config.json" if cfg_path.is_dir() else cfg_path


def tokenizer_dir_of(source: ModelSource) -> Path:
    """The tokenizer folder a run with this ModelSource loads, found without loading the model:
    model.tokenizer when it names a folder; else the model folder's own (a run folder's
    tokenizer/); else the bundled tokenizer for a random init, the bundled warm start or
    model.tokenizer "bundled"; else a FileNotFoundError."""
    if source.tokenizer and source.tokenizer != BUNDLED:
        return paths.as_path(source.tokenizer)
    if source.path and source.path != BUNDLED_WARM_START:
        own = own_tokenizer_dir(source.path)
        if has_tokenizer(own):
            return own
        if source.tokenizer != BUNDLED:
            raise FileNotFoundError(f"{source.path}: no tokenizer files; set model.tokenizer to a tokenizer folder")
    return bundled_tokenizer_dir()


def load_model(source: ModelSource) -> tuple[ModelConfig, Any, Path]:
    """Resolve a ModelSource to (config, params, tokenizer folder)."""
    tokenizer_dir = paths.local_folder(source.tokenizer) if source.tokenizer and source.tokenizer != BUNDLED else None
    if source.path:
        warm_start = source.path == BUNDLED_WARM_START
        config, params, own_tokenizer = load_pretrained(source_folder(source), **source.overrides())
        tokenizer_dir = tokenizer_dir or own_tokenizer
        if tokenizer_dir is None and (warm_start or source.tokenizer == BUNDLED):
            # A folder's own tokenizer wins; "bundled" fills in for folders without one.
            tokenizer_dir = bundled_tokenizer_dir()
        if tokenizer_dir is None:
            raise FileNotFoundError(f"{source.path}: no tokenizer files; set model.tokenizer to a tokenizer folder")
        return config, params, tokenizer_dir
    cfg_path = random_init_config_file(source)
    config = ModelConfig.from_hf(json.loads(cfg_path.read_text()), **source.overrides())
    params = model.init_params(config, jax.random.key(source.init_seed), init_std=source.init_std)
    return config, params, tokenizer_dir or bundled_tokenizer_dir()


def generation_eos_token_ids(source: ModelSource) -> tuple[int, ...]:
    """The EOS ids of the source folder's generation_config.json (an int or a list there);
    () when the model is a random init, or the folder has no such file or names none."""
    folder = source_folder(source)
    if folder is None:
        return ()
    path = folder / "generation_config.json"
    if not path.is_file():
        return ()
    try:
        value = json.loads(path.read_text()).get("eos_token_id")
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    ids = value if isinstance(value, list) else [] if value is None else [value]
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in ids):
        raise ValueError(f"{path}: eos_token_id={value!r}; expected a token id or a list of token ids")
    return tuple(ids)


def load_tokenizer(folder: str | os.PathLike, config: ModelConfig | None = None):
    """The HF tokenizer of a model folder, left padding as mxbai sets it.

    `config` matters for a run folder's tokenizer/, which has no config.json beside it:
    AutoTokenizer picks the tokenizer class from the model config's type when the
    tokenizer files do not name one (transformers 5 then uses e.g. Qwen2Tokenizer, whose
    pre-tokenizer rules differ from a bare tokenizer.json); passing the model's config
    gives the same class, hence the same ids, as loading the exported HF folder.
    """
    from transformers import AutoConfig, AutoTokenizer  # imported here: transformers is slow to import

    folder = paths.local_folder(folder)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise FileNotFoundError(f"{folder}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    kwargs = {}
    if config is not None and not (folder / "config.json").is_file():
        kwargs["config"] = AutoConfig.for_model(**config.to_hf())
    return AutoTokenizer.from_pretrained(str(folder), padding_side="left", **kwargs)
