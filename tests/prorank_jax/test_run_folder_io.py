"""prorank_jax.run_folder_io: a run folder's metadata written once, its model read back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prorank_jax import checkpoint as ckpt, run_folder_io
from prorank_jax.config import ModelConfig
from prorank_jax.model import init_params

BUNDLED = Path(__file__).resolve().parents[2] / "prorank_jax" / "data" / "bundled"
TINY_CONFIG = BUNDLED / "tiny_model.json"


def _assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _tiny():
    return ModelConfig.from_hf(TINY_CONFIG)


def test_write_run_metadata_and_load_for_inference(tmp_path):
    config = _tiny()
    rs = np.random.default_rng(3)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(rs.standard_normal(a.shape), a.dtype),
                                    jax.eval_shape(lambda: init_params(config, jax.random.key(3))))
    run = tmp_path / "run"
    resolved = {"loop": {"steps": 10}, "model": {"config": "bundled"}}
    run_folder_io.write_run_metadata(run, resolved_config=resolved, model_config=config.to_hf(),
                                     tokenizer_dir=BUNDLED / "tokenizer")
    assert sorted(p.name for p in run.iterdir()) == ["model_config.json", "run_config.json", "tokenizer"]
    assert json.loads((run / "run_config.json").read_text()) == resolved
    assert sorted(p.name for p in (run / "tokenizer").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    tx = optax.adamw(1e-3)
    with ckpt.Checkpointer(run / "checkpoints") as c:
        c.save(4, params=params, opt_state=tx.init(params), rng=jax.random.key(0), data_state={})
        later = jax.tree_util.tree_map(lambda x: x + 1, params)
        c.save(8, params=later, opt_state=tx.init(params), rng=jax.random.key(0), data_state={})

    loaded_config, loaded, tokenizer_dir = run_folder_io.load_for_inference(run)
    assert loaded_config == config
    _assert_trees_equal(loaded, later)
    assert tokenizer_dir == run / "tokenizer"
    _, at4, _ = run_folder_io.load_for_inference(run, step=4)
    _assert_trees_equal(at4, params)


def test_run_metadata_is_written_once(tmp_path, caplog):
    config = _tiny()
    run = tmp_path / "run"
    model_config = config.to_hf()
    run_folder_io.write_run_metadata(run, resolved_config={"lr": 1}, model_config=model_config, tokenizer_dir=None)
    with caplog.at_level(logging.WARNING, logger="prorank_jax.run_folder_io"):
        run_folder_io.write_run_metadata(run, resolved_config={"lr": 2}, model_config=model_config, tokenizer_dir=None)
    assert "lr" in caplog.text
    assert json.loads((run / "run_config.json").read_text()) == {"lr": 1}
    other = config.replace(num_hidden_layers=3).to_hf()
    with pytest.raises(ckpt.CheckpointError, match=r"model_config.json.*num_hidden_layers"):
        run_folder_io.write_run_metadata(run, resolved_config={"lr": 1}, model_config=other, tokenizer_dir=None)
    assert sorted(p.name for p in run.iterdir()) == ["model_config.json", "run_config.json"]  # no temp files left
    with pytest.raises(ckpt.CheckpointError, match="no tokenizer files"):
        run_folder_io.write_run_metadata(run, resolved_config={"lr": 1}, model_config=model_config,
                                         tokenizer_dir=tmp_path)
    assert sorted(p.name for p in run.iterdir()) == ["model_config.json", "run_config.json"]


def test_load_for_inference_names_what_is_missing(tmp_path):
    (tmp_path / "run_config.json").write_text("{}")
    expected = r"not a prorank run folder \(missing model_config.json, checkpoints/\)"
    with pytest.raises(ckpt.CheckpointError, match=expected):
        run_folder_io.load_for_inference(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        run_folder_io.load_for_inference(tmp_path / "nope")


def test_a_damaged_model_config_is_an_error_naming_the_file(tmp_path):
    run = tmp_path / "run"
    run_folder_io.write_run_metadata(run, resolved_config={"lr": 1}, model_config=_tiny().to_hf(), tokenizer_dir=None)
    (run / "checkpoints").mkdir()
    (run / "model_config.json").write_text('{"hidden_size": 8,')  # cut short, as by a full disk
    expected = r"model_config.json: exists but is not valid JSON"
    with pytest.raises(ckpt.CheckpointError, match=expected):
        run_folder_io.load_for_inference(run)
    with pytest.raises(ckpt.CheckpointError, match=expected):  # a resume into the folder says the same
        run_folder_io.write_run_metadata(run, resolved_config={"lr": 1}, model_config=_tiny().to_hf(),
                                         tokenizer_dir=None)
