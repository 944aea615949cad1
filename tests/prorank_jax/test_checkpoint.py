"""prorank_jax.checkpoint: orbax checkpoints, their damage and fallback, the save on preemption.

Cross-mesh and SIGTERM checks run in subprocesses: the simulated device count is
fixed when jax is first imported, and a signal test must not hit pytest itself.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prorank_jax import checkpoint as ckpt
from tests.helpers.env import xla_flags

# When a read fails, orbax closes its asyncio loop while tensorstore's other reads are
# still in flight; their late callbacks print "Event loop is closed" (harmless, and
# reported during whichever test runs then). Only that exact message is ignored.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:(?s)Exception ignored in.*RuntimeError. Event loop is closed:pytest.PytestUnraisableExceptionWarning")

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "prorank_jax" / "data" / "bundled"
TINY_CONFIG = BUNDLED / "tiny_model.json"


# ----------------------------------------------------------------------------- helpers
def _train_state(seed: int = 0):
    """Small params and an adamw state after one update, so mu/nu/count are non-trivial."""
    keys = jax.random.split(jax.random.key(seed), 2)
    params = {"dense": {"kernel": jax.random.normal(keys[0], (4, 3)), "bias": jnp.zeros(3)},
              "norm": {"weight": jax.random.normal(keys[1], (3,))}}
    tx = optax.adamw(1e-2, weight_decay=0.1)
    opt_state = tx.init(params)
    grads = jax.tree_util.tree_map(lambda p: 0.5 * p + 1.0, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _abstract(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _save(checkpointer, step, params, opt_state, **kw):
    return checkpointer.save(step, params=params, opt_state=opt_state, rng=jax.random.key(7),
                             data_state={"position": step}, **kw)


@pytest.fixture
def saved(tmp_path):
    """A checkpoints folder with complete steps 1 and 2."""
    params, opt_state = _train_state()
    directory = tmp_path / "checkpoints"
    with ckpt.Checkpointer(directory, async_save=False) as c:
        _save(c, 1, params, opt_state)
        _save(c, 2, params, opt_state)
    return directory


# ----------------------------------------------------------------------------- round trip
def test_round_trip_params_adamw_rng_and_data_state(tmp_path):
    params, opt_state = _train_state()
    rng = jax.random.key(1234)
    data_state = {"epoch": 2, "shards": [{"next_index": 17}], "name": "beir/scifact"}
    with ckpt.Checkpointer(tmp_path / "checkpoints") as c:
        assert c.save(3, params=params, opt_state=opt_state, rng=rng, data_state=data_state)
        c.wait()
        restored = c.restore(abstract_params=_abstract(params), abstract_opt_state=_abstract(opt_state))
    assert restored["step"] == 3
    _assert_trees_equal(restored["params"], params)
    _assert_trees_equal(restored["opt_state"], opt_state)
    assert int(restored["opt_state"][0].count) == 1
    assert restored["data_state"] == data_state
    # The rebuilt key is a typed key of the same implementation drawing the same numbers.
    assert jax.random.key_impl(restored["rng"]) == jax.random.key_impl(rng)
    np.testing.assert_array_equal(jax.random.key_data(restored["rng"]), jax.random.key_data(rng))
    np.testing.assert_array_equal(jax.random.uniform(restored["rng"], (5,)), jax.random.uniform(rng, (5,)))


def test_legacy_uint32_key_round_trips_as_raw_data(tmp_path):
    params, opt_state = _train_state()
    with ckpt.Checkpointer(tmp_path / "c", async_save=False) as c:
        c.save(1, params=params, opt_state=opt_state, rng=jax.random.PRNGKey(3), data_state=None)
        restored = c.restore(abstract_params=_abstract(params))
    assert restored["rng"].dtype == jnp.uint32
    np.testing.assert_array_equal(restored["rng"], jax.random.PRNGKey(3))
    assert restored["opt_state"] is None and restored["data_state"] is None


def test_interval_force_and_max_to_keep(tmp_path):
    params, opt_state = _train_state()
    directory = tmp_path / "checkpoints"
    with ckpt.Checkpointer(directory, save_interval_steps=3, max_to_keep=2) as c:
        started = {step: _save(c, step, params, opt_state) for step in range(1, 10)}
        c.wait()
        assert [s for s, ok in started.items() if ok] == [3, 6, 9]
        assert c.all_steps() == [6, 9]
        assert _save(c, 10, params, opt_state, force=True)  # off-interval, forced
        assert not _save(c, 10, params, opt_state, force=True)  # already saved: skipped, not an error
        c.wait()
        assert c.all_steps() == [9, 10] and c.latest_step() == 10
    assert sorted(p.name for p in directory.iterdir() if p.name.isdigit()) == ["10", "9"]


def test_data_state_must_be_json_before_anything_is_written(tmp_path):
    params, opt_state = _train_state()
    directory = tmp_path / "checkpoints"
    with ckpt.Checkpointer(directory) as c:
        with pytest.raises(ckpt.CheckpointError, match="step 4: data_state is not JSON-serialisable"):
            c.save(4, params=params, opt_state=opt_state, rng=None, data_state={"x": object()})
    assert c.latest_step() is None
    assert not [p for p in directory.iterdir() if p.name.startswith("4")]


def test_async_save_is_atomic(tmp_path):
    """Orbax writes <step>.orbax-checkpoint-tmp and renames it once committed: the final
    folder is never visible without its commit marker."""
    big = {"w": jnp.ones((2048, 2048)), "b": jnp.zeros(3)}  # 16 MB: the commit takes a moment
    directory = tmp_path / "checkpoints"
    seen_tmp, seen_final_incomplete = False, False
    with ckpt.Checkpointer(directory, async_save=True) as c:
        c.save(1, params=big, opt_state={"m": big["b"]}, rng=None, data_state={})
        deadline = time.time() + 30
        while time.time() < deadline:
            names = {p.name for p in directory.iterdir()}
            seen_tmp |= "1" + ckpt.TMP_SUFFIX in names
            if "1" in names:
                seen_final_incomplete |= not (directory / "1" / ckpt.COMMIT_FILE).is_file()
                break
        c.wait()
    assert seen_tmp, "the in-progress save should live under orbax's temporary name"
    assert not seen_final_incomplete
    assert ckpt.step_problem(directory / "1") is None


# ----------------------------------------------------------------------------- incomplete folders
def test_latest_step_skips_orbax_tmp_folder_with_warning(saved, caplog):
    shutil.copytree(saved / "2", saved / ("3" + ckpt.TMP_SUFFIX))  # a save killed before its rename
    with caplog.at_level(logging.WARNING, logger="prorank_jax.checkpoint"):
        assert ckpt.Checkpointer(saved, read_only=True).latest_step() == 2
    assert f"3{ckpt.TMP_SUFFIX}" in caplog.text and "half-written" in caplog.text


@pytest.mark.parametrize("damage, reason", [
    (lambda d: shutil.rmtree(d / "params"), "item 'params' is missing"),
    (lambda d: (d / "opt_state" / "_METADATA").write_text("{trunc"), "item 'opt_state'"),
    (lambda d: (d / "train_meta" / "metadata").unlink(), "item 'train_meta' is missing"),
    (lambda d: (d / ckpt.COMMIT_FILE).unlink(), "commit_success.txt"),
])
def test_latest_step_skips_damaged_step_with_warning(saved, caplog, damage, reason):
    shutil.copytree(saved / "2", saved / "5")
    (saved / "5" / "train_meta" / "metadata").write_text(json.dumps({"step": 5, "rng": None, "data_state": {}}))
    assert ckpt.step_problem(saved / "5") is None
    damage(saved / "5")
    reader = ckpt.Checkpointer(saved, read_only=True)
    with caplog.at_level(logging.WARNING, logger="prorank_jax.checkpoint"):
        assert reader.latest_step() == 2
    assert str(saved / "5") in caplog.text and reason in caplog.text
    with pytest.raises(ckpt.CheckpointError, match=r"5: incomplete checkpoint"):
        reader.restore(5, abstract_params={})


def test_no_complete_checkpoint_is_an_error_naming_the_folder(saved):
    shutil.rmtree(saved / "1")
    shutil.rmtree(saved / "2" / "params")
    with pytest.raises(ckpt.CheckpointError, match=r"no complete checkpoint.*\n.*/2: item 'params' is missing"):
        ckpt.Checkpointer(saved, read_only=True).latest_step()


def test_writable_checkpointer_refuses_to_restart_over_a_damaged_only_step(saved):
    shutil.rmtree(saved / "1")
    (saved / "2" / "params" / "_METADATA").unlink()
    expected = r"no complete checkpoint.*\n.*/2: item 'params' is missing.*moved to 2\.incomplete-"
    with pytest.raises(ckpt.CheckpointError, match=expected):
        ckpt.Checkpointer(saved).latest_step()


def test_only_orbax_tmp_folders_mean_a_fresh_start_when_writable(saved):
    for step in ("1", "2"):
        os.replace(saved / step, saved / (step + ckpt.TMP_SUFFIX))
    with pytest.raises(ckpt.CheckpointError, match=f"2{ckpt.TMP_SUFFIX}: half-written"):
        ckpt.Checkpointer(saved, read_only=True).latest_step()  # nothing to load for inference
    with ckpt.Checkpointer(saved) as c:
        assert c.latest_step() is None  # no save ever finished: nothing is lost by starting afresh


def test_empty_folder_has_no_latest_step(tmp_path):
    with ckpt.Checkpointer(tmp_path / "fresh") as c:
        assert c.latest_step() is None
        with pytest.raises(ckpt.CheckpointError, match="holds no checkpoints"):
            c.restore(abstract_params={})


def test_writable_checkpointer_sets_damaged_step_aside_and_saves_it_again(saved, caplog):
    shutil.copytree(saved / "2", saved / "3")
    shutil.rmtree(saved / "3" / "opt_state")
    shutil.copytree(saved / "2", saved / ("4" + ckpt.TMP_SUFFIX))
    params, opt_state = _train_state(seed=1)
    with caplog.at_level(logging.WARNING, logger="prorank_jax.checkpoint"):
        c = ckpt.Checkpointer(saved, async_save=False)
    assert f"{saved / '3'} is incomplete (item 'opt_state' is missing" in caplog.text
    assert f"{saved / '4'}{ckpt.TMP_SUFFIX} is half-written" in caplog.text
    aside = [p.name for p in saved.iterdir() if p.name.startswith("3.incomplete-")]
    assert len(aside) == 1  # kept for inspection, not deleted
    assert c.latest_step() == 2
    assert _save(c, 3, params, opt_state)  # orbax would refuse this with the damaged folder in place
    restored = c.restore(abstract_params=_abstract(params), abstract_opt_state=_abstract(opt_state))
    assert _save(c, 4, params, opt_state)  # orbax removes its own leftover temporary folder first
    c.close()
    assert restored["step"] == 3
    _assert_trees_equal(restored["params"], params)
    assert sorted(p.name for p in saved.iterdir() if not p.name.startswith("3.incomplete-")) == ["1", "2", "3", "4"]


def test_read_only_checkpointer_changes_nothing(saved):
    before = sorted(p.name for p in saved.iterdir())
    shutil.copytree(saved / "2", saved / ("9" + ckpt.TMP_SUFFIX))
    reader = ckpt.Checkpointer(saved, read_only=True)
    assert reader.latest_step() == 2
    with pytest.raises(ckpt.CheckpointError, match="read-only"):
        reader.save(3, params={}, opt_state={}, rng=None, data_state={})
    reader.close()
    assert sorted(p.name for p in saved.iterdir()) == sorted(before + ["9" + ckpt.TMP_SUFFIX])


def test_restore_mismatched_structure_names_the_folder(saved):
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoints/2: could not be restored"):
        ckpt.Checkpointer(saved, read_only=True).restore(
            abstract_params={"other": jax.ShapeDtypeStruct((2,), jnp.float32)})


# ----------------------------------------------------------------------------- config item
def test_each_step_holds_the_config_it_was_saved_with(tmp_path, caplog):
    params, opt_state = _train_state()
    directory = tmp_path / "checkpoints"
    first = {"loop": {"steps": 10}, "optimizer": {"betas": (0.9, 0.99)}}
    resumed = {"loop": {"steps": 20}, "optimizer": {"betas": (0.9, 0.99)}}
    with ckpt.Checkpointer(directory, async_save=False, run_config=first) as c:
        _save(c, 1, params, opt_state)
    with ckpt.Checkpointer(directory, async_save=False, run_config=resumed) as c:  # resumed with other overrides
        _save(c, 2, params, opt_state)
        _save(c, 3, params, opt_state, config={"explicit": True})
    as_json = lambda cfg: json.loads(json.dumps(cfg))  # noqa: E731  (tuples come back as lists)
    for step in (1, 2, 3):
        assert (directory / str(step) / ckpt.CONFIG / ckpt.JSON_ITEM_FILE).is_file()
        assert ckpt.step_problem(directory / str(step)) is None
    reader = ckpt.Checkpointer(directory, read_only=True)
    assert reader.restore_config(1) == as_json(first)
    assert reader.restore_config(2) == as_json(resumed)
    assert reader.restore_config() == {"explicit": True}  # the latest step
    assert reader.restore(2, abstract_params=_abstract(params))["config"] == as_json(resumed)
    # A damaged config item makes the step incomplete, like any other item.
    (directory / "3" / ckpt.CONFIG / ckpt.JSON_ITEM_FILE).write_text('{"explicit": tr')
    assert "item 'config'" in ckpt.step_problem(directory / "3")
    with caplog.at_level(logging.WARNING, logger="prorank_jax.checkpoint"):
        assert reader.latest_step() == 2
    assert f"{directory / '3'} is skipped: item 'config'" in caplog.text
    (directory / "3" / ckpt.CONFIG / ckpt.JSON_ITEM_FILE).write_text("[1, 2]")
    assert "item 'config'" in ckpt.step_problem(directory / "3") and "not a JSON object" in ckpt.step_problem(
        directory / "3")


def test_checkpoints_without_a_config_still_restore(saved):
    """The fixture's steps are saved with no config item, like checkpoints older than it."""
    assert not (saved / "2" / ckpt.CONFIG).exists()
    assert ckpt.step_problem(saved / "2") is None
    params, opt_state = _train_state()
    reader = ckpt.Checkpointer(saved, read_only=True)
    assert reader.latest_step() == 2 and reader.restore_config() is None
    restored = reader.restore(abstract_params=_abstract(params), abstract_opt_state=_abstract(opt_state))
    assert restored["config"] is None and restored["step"] == 2
    _assert_trees_equal(restored["params"], params)


def test_config_must_be_json_before_anything_is_written(tmp_path):
    params, opt_state = _train_state()
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoints: run_config is not JSON-serialisable"):
        ckpt.Checkpointer(tmp_path / "checkpoints", run_config={"path": Path("/x")})
    with ckpt.Checkpointer(tmp_path / "checkpoints") as c:
        with pytest.raises(ckpt.CheckpointError, match=r"step 4: config is not JSON-serialisable"):
            _save(c, 4, params, opt_state, config={"lr": float("nan")})
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("4")]


# ----------------------------------------------------------------------------- damaged array data
def _truncate_array_data(step_dir: Path) -> None:
    """Cut every OCDBT data file of the params item in half, leaving orbax's metadata
    (_METADATA, manifests, commit markers) intact.

    The files are <item>/d/<hash> (the database orbax merges after a save; small arrays
    sit inline in it) and <item>/ocdbt.process_N/d/<hash> (each process's own).
    """
    data = [f for f in (step_dir / ckpt.PARAMS).rglob("*") if f.is_file() and f.parent.name == "d"]
    assert data, f"no OCDBT data files under {step_dir / ckpt.PARAMS}: {sorted(step_dir.rglob('*'))}"
    for f in data:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.fixture
def saved_2_and_4(tmp_path):
    """Steps 2 and 4 with different params (so a restore shows which it read)."""
    params2, opt_state2 = _train_state(seed=2)
    params4, opt_state4 = _train_state(seed=4)
    directory = tmp_path / "checkpoints"
    with ckpt.Checkpointer(directory, async_save=False) as c:
        _save(c, 2, params2, opt_state2)
        _save(c, 4, params4, opt_state4)
    return directory, (params2, opt_state2), (params4, opt_state4)


def _restore_latest(checkpointer, params, opt_state):
    return checkpointer.restore_latest(abstract_params=_abstract(params), abstract_opt_state=_abstract(opt_state))


def test_restore_latest_falls_back_past_a_step_whose_array_data_is_damaged(saved_2_and_4, caplog):
    directory, (params2, opt_state2), (params4, opt_state4) = saved_2_and_4
    _truncate_array_data(directory / "4")
    assert ckpt.step_problem(directory / "4") is None  # the metadata checks cannot see it
    with ckpt.Checkpointer(directory, read_only=True) as reader:
        assert reader.latest_step() == 4
        with caplog.at_level(logging.WARNING, logger="prorank_jax.checkpoint"):
            restored = _restore_latest(reader, params2, opt_state2)
    assert restored["step"] == 2
    _assert_trees_equal(restored["params"], params2)
    _assert_trees_equal(restored["opt_state"], opt_state2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"checkpoint folder {directory / '4'} could not be restored (" in w and "trying step 2" in w
               and "OUT_OF_RANGE" in w for w in warnings), warnings
    assert sorted(p.name for p in directory.iterdir()) == ["2", "4"]  # read-only: nothing moved


def test_writable_checkpointer_moves_the_unrestorable_step_aside_and_saves_it_again(saved_2_and_4, caplog):
    directory, (params2, opt_state2), (params4, opt_state4) = saved_2_and_4
    _truncate_array_data(directory / "4")
    with caplog.at_level(logging.WARNING, logger="prorank_jax.checkpoint"):
        with ckpt.Checkpointer(directory, async_save=False) as c:
            assert _restore_latest(c, params2, opt_state2)["step"] == 2
            aside = [p.name for p in directory.iterdir() if p.name.startswith("4.unrestorable-")]
            assert len(aside) == 1 and c.all_steps() == [2]
            # Without moving it aside orbax would skip this save as "already saved".
            assert _save(c, 4, params4, opt_state4)
            restored = _restore_latest(c, params4, opt_state4)
    assert f"moved checkpoint folder {directory / '4'}, which could not be restored, to {aside[0]}" in caplog.text
    assert restored["step"] == 4
    _assert_trees_equal(restored["params"], params4)


def test_restore_latest_lists_every_step_when_none_restores(saved_2_and_4, caplog):
    directory, (params2, opt_state2), _ = saved_2_and_4
    for step in ("2", "4"):
        _truncate_array_data(directory / step)
    with ckpt.Checkpointer(directory, async_save=False) as c:
        with pytest.raises(ckpt.CheckpointError) as caught:
            _restore_latest(c, params2, opt_state2)
    message = str(caught.value)
    assert message.startswith(f"{directory}: no complete checkpoint could be restored; tried, newest first:")
    lines = message.splitlines()[1:-1]
    assert [line.split(": ")[0].strip() for line in lines] == [str(directory / "4"), str(directory / "2")]
    assert all("OUT_OF_RANGE" in line for line in lines), lines
    assert "no earlier complete step" in caplog.text
    assert sorted(p.name for p in directory.iterdir()) == ["2", "4"]  # nothing restored: nothing moved aside


def test_restore_latest_of_an_empty_folder_is_none(tmp_path):
    with ckpt.Checkpointer(tmp_path / "fresh") as c:
        assert c.restore_latest(abstract_params={}) is None


# ----------------------------------------------------------------------------- across meshes
_MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from prorank_jax import checkpoint as ckpt
    from prorank_jax.config import ModelConfig
    from prorank_jax.model import init_params
    from prorank_jax.sharding import make_mesh, param_shardings

    mode, directory, expected_file, mesh_shape = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    restore_dir, restore_expected = (sys.argv[6], sys.argv[7]) if len(sys.argv) > 6 else (directory, expected_file)
    assert jax.device_count() == int(np.prod(json.loads(mesh_shape))), jax.devices()
    mesh = make_mesh(*json.loads(mesh_shape))
    config = ModelConfig.from_hf(sys.argv[5])
    tx = optax.adamw(1e-2)
    abstract_params = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    p_shard = param_shardings(abstract_params, mesh)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    o_shard = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, p_shard,
                                    transform_non_params=lambda _: NamedSharding(mesh, P()),
                                    is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))

    def check_placed(tree, shardings):
        for x, s in zip(jax.tree_util.tree_leaves(tree),
                        jax.tree_util.tree_leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))):
            assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)

    def save():
        # Distinct random values in every leaf (init_params' zero biases and unit norms would
        # hide a mixed-up shard); eager init_params itself is needlessly slow here.
        rs = np.random.default_rng(0)
        params = jax.tree_util.tree_map(lambda a: rs.standard_normal(a.shape).astype(a.dtype), abstract_params)
        params = jax.device_put(params, p_shard)
        opt_state = jax.jit(tx.init, out_shardings=o_shard)(params)
        grads = jax.tree_util.tree_map(lambda p: jnp.sin(p) + 0.1, params)
        updates, opt_state = jax.jit(tx.update)(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        check_placed(params, p_shard)
        check_placed(opt_state, o_shard)
        leaves = jax.tree_util.tree_leaves(p_shard, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
        sharded = sum(1 for s in leaves if any(a is not None for a in s.spec))
        print("sharded leaves:", sharded)
        with ckpt.Checkpointer(directory) as c:
            c.save(11, params=params, opt_state=opt_state, rng=jax.random.key(99), data_state={"mesh": mesh_shape},
                   force=True)
        flat = {f"p{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(params))}
        flat.update({f"o{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(opt_state))})
        np.savez(expected_file, **flat)

    def restore():
        c = ckpt.Checkpointer(restore_dir, read_only=True)
        r = c.restore(abstract_params=abstract_params, abstract_opt_state=abstract_opt,
                      param_shardings=p_shard, opt_state_shardings=o_shard)
        check_placed(r["params"], p_shard)
        check_placed(r["opt_state"], o_shard)
        expected = np.load(restore_expected)
        for i, x in enumerate(jax.tree_util.tree_leaves(r["params"])):
            np.testing.assert_array_equal(np.asarray(x), expected[f"p{i}"])
        for i, x in enumerate(jax.tree_util.tree_leaves(r["opt_state"])):
            np.testing.assert_array_equal(np.asarray(x), expected[f"o{i}"])
        assert r["step"] == 11 and r["data_state"]["mesh"] != mesh_shape  # saved under the other mesh
        np.testing.assert_array_equal(jax.random.key_data(r["rng"]), jax.random.key_data(jax.random.key(99)))
        print("restored", len(expected.files), "arrays onto", jax.device_count(), "devices")

    for action in mode.split("+"):
        {"save": save, "restore": restore}[action]()
""")


def _run_mesh(tmp_path, mode, directory, expected, devices, mesh_shape, restore_from=()):
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices=devices), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    script = tmp_path / "mesh_script.py"
    script.write_text(_MESH_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), mode, str(directory), str(expected), json.dumps(mesh_shape),
                           str(TINY_CONFIG), *map(str, restore_from)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    return proc.stdout


def test_restore_onto_a_different_mesh_both_ways(tmp_path):
    on8, on1 = tmp_path / "saved_on_8", tmp_path / "saved_on_1"
    out = _run_mesh(tmp_path, "save", on8, tmp_path / "on8.npz", 8, [2, 2, 2])
    assert "sharded leaves: 0" not in out  # the (2,2,2) mesh really splits the params
    # One single-device process restores the 8-device checkpoint, then saves its own.
    out = _run_mesh(tmp_path, "restore+save", on1, tmp_path / "on1.npz", 1, [1, 1, 1],
                    restore_from=(on8, tmp_path / "on8.npz"))
    assert "onto 1 devices" in out
    assert "onto 8 devices" in _run_mesh(tmp_path, "restore", on1, tmp_path / "on1.npz", 8, [2, 2, 2])


# ----------------------------------------------------------------------------- preemption
_LOOP_SCRIPT = textwrap.dedent("""
    import signal, sys, time
    import jax, jax.numpy as jnp
    from prorank_jax import checkpoint as ckpt, preemption

    params = {"w": jnp.zeros((4,))}
    opt_state = {"count": jnp.zeros((), jnp.int32)}
    checkpointer = ckpt.Checkpointer(sys.argv[1], save_interval_steps=1000)
    step = 0
    with preemption.preemption_guard():
        while step < 10_000:
            params = {"w": params["w"] + 1.0}
            opt_state = {"count": opt_state["count"] + 1}
            step += 1
            print("step", step, flush=True)
            checkpointer.save(step, params=params, opt_state=opt_state, rng=jax.random.key(0),
                              data_state={"step": step})  # a no-op off the interval
            if preemption.preemption_requested():
                checkpointer.save(step, params=params, opt_state=opt_state, rng=jax.random.key(0),
                                  data_state={"step": step}, force=True)
                checkpointer.wait()
                print(f"preempted: saved step {step}, stopping", flush=True)
                break
            time.sleep(0.02)
    checkpointer.close()
    print("handler restored:", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True)
""")


def test_sigterm_mid_run_leaves_a_complete_checkpoint_of_the_current_step(tmp_path):
    script = tmp_path / "loop.py"
    script.write_text(_LOOP_SCRIPT)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    directory = tmp_path / "checkpoints"
    proc = subprocess.Popen([sys.executable, str(script), str(directory)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.strip() == "step 5":
                proc.send_signal(signal.SIGTERM)
                break
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-4000:]
    saved_line = [l for l in out.splitlines() if l.startswith("preempted: saved step")]
    assert saved_line, out
    step = int(saved_line[0].split()[3].rstrip(","))
    assert step >= 5
    assert "handler restored: True" in out
    reader = ckpt.Checkpointer(directory, read_only=True)
    assert reader.all_steps() == [step]
    abstract = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
    restored = reader.restore(abstract_params=abstract,
                              abstract_opt_state={"count": jax.ShapeDtypeStruct((), jnp.int32)})
    np.testing.assert_array_equal(restored["params"]["w"], np.full(4, float(step)))
    assert int(restored["opt_state"]["count"]) == step and restored["data_state"] == {"step": step}
