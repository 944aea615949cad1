"""The dtype names a ModelConfig holds ("float32", "bfloat16", "float16") as jax dtypes.

Kept apart from model.py so that weight conversion (hf.py) and export cast arrays
without importing flax.
"""

from __future__ import annotations

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str):
    return _DTYPES[name]
