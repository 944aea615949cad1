"""The self-check of an exported folder: score a few pairs with the folder as written and with
the checkpoint, and refuse the folder when they differ.

The folder is read back the way a user would get it (hf.load over its safetensors, its
own tokenizer files, its prorank.json prompt family); the reference is the checkpoint's
params rounded to the export dtype, so a faithful bfloat16 file meets the same float32
bound as a float32 one. Both sides score with the library's own forward pass in float32.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from prorank_jax import hf
from prorank_jax.config import ModelConfig
from prorank_jax.dtypes import dtype_of
from prorank_jax.export.errors import ExportCheckError
from prorank_jax.prompts import MXBAI_V2, detect_prompt_family

# Tolerance on scores (max abs diff). The drift of bfloat16 scores from the float32
# params is reported, not checked.
CHECK_ATOL = 1e-4
# A few (query, document) pairs for the self-check when no bundled data is readable.
FALLBACK_PAIRS = (
    ("what is the capital of France?", "Paris is the capital and most populous city of France."),
    ("what is the capital of France?", "The mitochondria is the powerhouse of the cell."),
    ("how do plants make food", "Photosynthesis converts light energy into chemical energy stored in glucose."),
    ("how do plants make food", ""),
)


def check_pairs(limit: int = 8) -> list[tuple[str, str]]:
    """A few (query, document) pairs from the bundled data (relevant and not), else built-in ones."""
    try:
        from prorank_jax.bundled import bundled_data_dir
        from prorank_jax.data import join_title_text

        folder = bundled_data_dir()
        queries = [json.loads(x) for x in (folder / "queries.jsonl").read_text().splitlines() if x.strip()]
        docs = [json.loads(x) for x in (folder / "corpus.jsonl").read_text().splitlines() if x.strip()]
        pairs = []
        for i, q in enumerate(queries[: limit // 2]):
            for d in (docs[i % len(docs)], docs[(i * 7 + 3) % len(docs)]):
                pairs.append((q["text"], join_title_text(d.get("title", ""), d["text"])))
        return pairs[:limit] or list(FALLBACK_PAIRS)
    except (OSError, KeyError, ValueError, ImportError):
        return list(FALLBACK_PAIRS)


def score_pairs(config: ModelConfig, params, tokenizer, pairs: Sequence[tuple[str, str]],
                max_length: int = 512, family: str = MXBAI_V2) -> np.ndarray:
    """Float32 scores of pairs (the family's prompt, float32 compute) with prorank_jax.score.rerank_scores."""
    import jax
    import jax.numpy as jnp

    from prorank_jax.prompts import left_pad, make_prompt
    from prorank_jax.score import rerank_scores

    config = config.replace(dtype="float32", param_dtype="float32")
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
    prompt = make_prompt(family, tokenizer, max_length, config.max_position_embeddings)
    encoded = prompt.encode_batch([q for q, _ in pairs], [d for _, d in pairs])
    ids, mask = left_pad([e.input_ids for e in encoded], max(len(e) for e in encoded),
                         tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    scores = rerank_scores(params, config, jnp.asarray(ids), jnp.asarray(mask), prompt.yes_id, prompt.no_id)
    return np.asarray(scores, np.float32)


def round_to(params, dtype: str):
    """params rounded to dtype and back to float32: what a folder written in dtype holds."""
    import jax

    target = np.dtype(dtype_of(dtype))
    return jax.tree_util.tree_map(lambda x: np.asarray(x).astype(target).astype(np.float32), params)


@dataclasses.dataclass
class CheckResult:
    pairs: int
    max_abs_diff: float
    atol: float
    dtype_drift: float  # max |scores of the exported dtype - scores of the checkpoint's params|

    def line(self) -> str:
        s = (f"self-check: {self.pairs} pairs, max |reloaded - checkpoint| = {self.max_abs_diff:.2e} "
             f"(<= {self.atol:g})")
        if self.dtype_drift:
            s += f"; rounding to the export dtype moves scores by at most {self.dtype_drift:.3g}"
        return s


def self_check(folder: Path, config: ModelConfig, params, tokenizer_dir: Path, dtype: str,
               pairs: Sequence[tuple[str, str]] | None = None, atol: float = CHECK_ATOL,
               family: str = MXBAI_V2) -> CheckResult:
    """Score pairs with the written folder (hf.load + its own tokenizer files) and with the
    checkpoint's params (rounded to `dtype`, with the source tokenizer); raise on mismatch."""
    from prorank_jax.pretrained import load_tokenizer

    pairs = list(pairs or check_pairs())
    source_tok = load_tokenizer(tokenizer_dir, config)
    expected = score_pairs(config, round_to(params, dtype), source_tok, pairs, family=family)
    drift = 0.0
    if dtype != "float32":
        drift = float(np.max(np.abs(score_pairs(config, params, source_tok, pairs, family=family) - expected)))
    try:
        re_config, re_params = hf.load(folder, param_dtype="float32")
        got = score_pairs(re_config, re_params, load_tokenizer(folder), pairs, family=detect_prompt_family(folder))
    except Exception as err:  # any failure to read the folder back is a failed check
        raise ExportCheckError(f"{folder}: the written folder could not be reloaded and scored: "
                               f"{type(err).__name__}: {err}") from err
    diff = float(np.max(np.abs(got - expected))) if len(pairs) else 0.0
    if not np.all(np.isfinite(got)) or not diff <= atol:
        raise ExportCheckError(
            f"{folder}: scores of the reloaded folder differ from the checkpoint's by up to {diff:.3g} "
            f"(tolerance {atol:g}) on {len(pairs)} pairs; expected {expected.tolist()}, got {got.tolist()}"
        )
    return CheckResult(len(pairs), diff, atol, drift)
