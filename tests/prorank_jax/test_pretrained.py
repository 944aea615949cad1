"""Where load_model takes a model and its tokenizer from: the bundled warm start, and
model.tokenizer "bundled" as a fallback that never overrides a folder's own tokenizer."""

import shutil

import jax
import numpy as np
import pytest

from prorank_jax import hf
from prorank_jax.data import bundled_tokenizer_dir
from prorank_jax.pretrained import BUNDLED_WARM_START, ModelSource, bundled_warm_start_dir, load_model


def _copy_model(dst):
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(bundled_warm_start_dir() / name, dst / name)
    return dst


def test_the_bundled_warm_start_loads_with_the_bundled_tokenizer():
    config, params, tokenizer_dir = load_model(ModelSource(path=BUNDLED_WARM_START))
    want_config, want_params = hf.load(bundled_warm_start_dir())
    assert config == want_config and tokenizer_dir == bundled_tokenizer_dir()
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(want_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bundled_tokenizer_fills_in_but_a_folder_keeps_its_own(tmp_path):
    bare = _copy_model(tmp_path / "bare")
    assert load_model(ModelSource(path=str(bare), tokenizer="bundled"))[2] == bundled_tokenizer_dir()
    with pytest.raises(FileNotFoundError, match="bare: no tokenizer files; set model.tokenizer"):
        load_model(ModelSource(path=str(bare)))
    own = _copy_model(tmp_path / "own")
    shutil.copytree(bundled_tokenizer_dir(), own, dirs_exist_ok=True)
    assert load_model(ModelSource(path=str(own), tokenizer="bundled"))[2] == own
