"""What a prorank run folder is, in one place: its file names and how a folder is told apart.

A training run writes <out>/run_config.json, <out>/model_config.json, <out>/tokenizer/ and
<out>/checkpoints/<step>/ (prorank_jax.checkpoint), and at the end <out>/hf/ (an HF folder,
save_final_model). Loading (prorank_jax.pretrained), the Reranker, export, `--dry-run`,
`--compile-for` and the checkpoint reader all ask this module, so "is this a run folder"
has one answer; a folder may be local or in a gs:// bucket (prorank_jax.paths). It imports nothing heavy: the CLI's config-only paths use it too.
"""

from __future__ import annotations

from pathlib import Path

from prorank_jax.paths import as_path

RUN_CONFIG_FILE = "run_config.json"
MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS_DIR = "checkpoints"
FINAL_HF_DIR = "hf"  # the finished run's model as an HF folder (what stage 2 and export start from)
RUN_FOLDER_FILES = (RUN_CONFIG_FILE, MODEL_CONFIG_FILE)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # either one makes a folder a tokenizer folder

RUN_FOLDER = "run folder"
HF_FOLDER = "HF folder"


def missing_run_folder_parts(path: str | Path) -> list[str]:
    """The run-folder files (and checkpoints/) absent from `path`; [] for a run folder."""
    path = as_path(path)
    missing = [name for name in RUN_FOLDER_FILES if not (path / name).is_file()]
    if not (path / CHECKPOINTS_DIR).is_dir():
        missing.append(f"{CHECKPOINTS_DIR}/")
    return missing


def is_run_folder(path: str | Path) -> bool:
    return not missing_run_folder_parts(path)


def has_tokenizer(path: str | Path) -> bool:
    return any((as_path(path) / name).exists() for name in TOKENIZER_FILES)


def folder_kind(path: str | Path) -> str | None:
    """RUN_FOLDER, HF_FOLDER (a config.json there) or None: a run folder wins when it is both."""
    path = as_path(path)
    if is_run_folder(path):
        return RUN_FOLDER
    if (path / "config.json").is_file():
        return HF_FOLDER
    return None


def model_config_file(path: str | Path) -> Path | None:
    """The HF config.json of the model a folder holds (read without the weights), or None."""
    kind = folder_kind(path)
    if kind is None:
        return None
    return as_path(path) / (MODEL_CONFIG_FILE if kind == RUN_FOLDER else "config.json")


def own_tokenizer_dir(path: str | Path) -> Path:
    """Where a model folder keeps its tokenizer: a run folder's tokenizer/, else the folder itself."""
    path = as_path(path)
    return path / TOKENIZER_DIR if is_run_folder(path) else path
