"""A GGUF file (llama.cpp's format) as a Hugging Face folder every command loads.

Reading goes through transformers' own GGUF reader (config, dequantised tensors with
llama.cpp's Q/K permutation undone, tokenizer with its chat template), so what we write
is what `AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)` gives. Before
that reader runs, the file's header is checked here: transformers silently skips tensors
it has no name for and its architecture error names neither the file nor what we read,
and our decoder implements fewer architectures than transformers does.

The import needs torch, transformers and gguf (requirements-gguf.txt); the runtime
does not, so they are imported inside the functions.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import jax
import numpy as np

from prorank_jax import hf, paths
from prorank_jax.config import ModelConfig
from prorank_jax.status import STATUS

log = logging.getLogger(__name__)

# general.architecture values our decoder implements (llama.cpp's names equal HF's model_type).
GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")
IMPORT_DTYPES = ("float32", "bfloat16")
REQUIREMENTS_HINT = "pip install -r requirements-gguf.txt (torch, gguf, accelerate)"


class GGUFImportError(ValueError):
    """A GGUF file this library cannot import; the message names the file and what it holds."""


def inspect_gguf(path: str | os.PathLike) -> dict:
    """What a GGUF file holds, from its header: architecture, tensor count and the
    quantisation types of its tensors. Raises GGUFImportError for a file we cannot read."""
    gguf = _require("gguf")
    path = Path(path)
    if not path.is_file():
        raise GGUFImportError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises ValueError, struct.error, IndexError... on a bad file
        raise GGUFImportError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from None
    field = reader.fields.get("general.architecture")
    if field is None:
        raise GGUFImportError(f"{path}: the GGUF header has no general.architecture")
    architecture = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    types = sorted({t.tensor_type.name for t in reader.tensors})
    readable = readable_tensor_types()
    unreadable = sorted(set(types) - readable)
    if architecture not in GGUF_ARCHITECTURES:
        raise GGUFImportError(
            f"{path}: holds a {architecture!r} model; import-gguf reads the architectures {GGUF_ARCHITECTURES}"
        )
    if unreadable:
        raise GGUFImportError(
            f"{path}: holds tensors quantised as {unreadable}, which transformers' GGUF reader cannot "
            f"dequantise (it reads {sorted(readable)})"
        )
    return {"architecture": architecture, "tensors": len(reader.tensors), "tensor_types": types}


def readable_tensor_types() -> set[str]:
    """The ggml tensor types transformers' GGUF reader turns into float tensors: the float
    types and every quantisation its dequantiser has a block layout for."""
    try:
        from transformers.integrations.gguf.dequant import GGML_BLOCK, GGML_NAME
    except ImportError:
        raise GGUFImportError(f"import-gguf needs transformers' GGUF reader (transformers>=5.23): "
                              f"{REQUIREMENTS_HINT}") from None
    return {"F32", "F16", "BF16"} | {GGML_NAME[t] for t in GGML_BLOCK}


def import_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "float32") -> Path:
    """Write gguf_file as an HF folder at out_dir (config.json, model.safetensors, tokenizer
    files with the chat template) in `dtype`; the folder appears whole or not at all."""
    if dtype not in IMPORT_DTYPES:
        raise GGUFImportError(f"dtype={dtype!r}; expected one of {IMPORT_DTYPES}")
    gguf_file = paths.local_file(gguf_file)  # transformers' GGUF reader needs a local file
    held = inspect_gguf(gguf_file)
    log.info("importing %s: %s, %d tensors (%s)", gguf_file, held["architecture"], held["tensors"],
             ", ".join(held["tensor_types"]))
    torch = _require("torch")
    transformers = _require("transformers")
    folder, name = str(gguf_file.parent), gguf_file.name
    hf_config = transformers.AutoConfig.from_pretrained(folder, gguf_file=name)
    config = ModelConfig.from_hf(hf_config.to_dict(), param_dtype=dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    del model
    params = hf.params_from_hf_tensors(tensors, config, source=str(gguf_file))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not getattr(tokenizer, "chat_template", None):
        log.warning("%s has no chat template (tokenizer.chat_template); the folder is written without one", gguf_file)
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        tokenizer.save_pretrained(tokenizer_dir)
        # hf.save assembles the folder beside out_dir and renames it into place.
        hf.save(params, config, out_dir, tokenizer_dir=tokenizer_dir)
    STATUS.info("imported %s (%s, %s parameters, %s) to %s", gguf_file, held["architecture"],
                f"{sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params)):,}", dtype, out_dir)
    return paths.as_path(out_dir)


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise GGUFImportError(f"import-gguf needs the {module!r} package: {REQUIREMENTS_HINT}") from None
