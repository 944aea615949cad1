"""Where the data shipped inside the package lives (prorank_jax/data/bundled/).

A module of its own, outside the data package, so that the model loader can find the
bundled tiny model config and tokenizer without importing the data readers.
"""

from __future__ import annotations

from pathlib import Path


def bundled_data_dir() -> Path:
    """The small BEIR-layout dataset shipped inside the package (see its README.md)."""
    return Path(__file__).resolve().parent / "data" / "bundled"


def bundled_tokenizer_dir() -> Path:
    """The tiny byte-level BPE tokenizer trained on the bundled data (loadable by AutoTokenizer)."""
    return bundled_data_dir() / "tokenizer"
