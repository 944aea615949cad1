"""run_loop: its schedule of evaluations (the starting model first, then every eval_every steps)
and its checkpoints, resumed past a step whose array data is damaged."""

import jax
import jax.numpy as jnp
import optax
import pytest

from prorank_jax import training


def run(tmp_path, *, start_step: int, steps: int = 4, eval_every: int = 2):
    params = {"w": jnp.zeros(())}
    state = training.init_train_state(params, optax.sgd(1.0))

    def train_step(state, batch):
        params = {"w": state.params["w"] + batch["delta"]}
        return state._replace(step=state.step + 1, params=params), {"loss": params["w"]}

    seen = []

    def evaluate(state):
        seen.append(float(state.params["w"]))
        return {"w": float(state.params["w"])}

    loop = training.LoopConfig(steps=steps, log_every=1, eval_every=eval_every, progress_bar=False)
    training.run_loop(state=state, start_step=start_step, train_step=train_step,
                      produce=lambda state, rng: training.StepOutput({"delta": jnp.ones(())}),
                      loop=loop, out_dir=tmp_path, base_rng=jax.random.key(0), evaluate=evaluate)
    evals = [(r["step"], r["eval/w"]) for r in training.read_metrics(tmp_path) if "eval/w" in r]
    return evals, seen


def test_a_fresh_run_evaluates_the_starting_model_as_step_0(tmp_path):
    evals, _ = run(tmp_path, start_step=0)
    assert evals == [(0, 0.0), (2, 2.0), (4, 4.0)]


def test_a_resumed_run_does_not_evaluate_its_starting_point_again(tmp_path):
    evals, seen = run(tmp_path, start_step=2)
    assert evals == [(4, 2.0)] and seen == [2.0]  # only steps 3 and 4 ran (w 0 -> 2), then step 4's evaluation


def test_no_evaluation_at_all_without_eval_every(tmp_path):
    evals, seen = run(tmp_path, start_step=0, eval_every=0)
    assert evals == [] and seen == []


# ----------------------------------------------------------------------------- checkpoints and resume
def _adding_step(state, batch):
    params = {"w": state.params["w"] + batch["delta"]}
    return state._replace(step=state.step + 1, params=params), {"loss": params["w"]}


def _train_with_checkpoints(out_dir, checkpointer, state, *, start_step: int, steps: int):
    loop = training.LoopConfig(steps=steps, log_every=1, save_every=2, progress_bar=False)
    return training.run_loop(state=state, start_step=start_step, train_step=_adding_step,
                             produce=lambda state, rng: training.StepOutput({"delta": jnp.ones(())}),
                             loop=loop, out_dir=out_dir, base_rng=jax.random.key(0), checkpointer=checkpointer)


# A failed orbax read can leave tensorstore callbacks that print "Event loop is closed" (harmless).
@pytest.mark.filterwarnings(
    r"ignore:(?s)Exception ignored in.*RuntimeError. Event loop is closed:pytest.PytestUnraisableExceptionWarning")
def test_resume_past_a_damaged_step_continues_from_the_one_before(tmp_path, caplog):
    """Steps 2 and 4 saved with the first config; step 4's array data is truncated; the
    resume restores step 2, trains on and saves 4 and 6 again, each with the new config."""
    import logging

    from prorank_jax import checkpoint as ckpt

    tx = optax.adam(1e-3)
    state = training.init_train_state({"w": jnp.zeros(())}, tx)
    abstract = jax.eval_shape(lambda: state)
    directory = tmp_path / "checkpoints"
    first, resumed = {"loop": {"steps": 4}}, {"loop": {"steps": 6}}
    with ckpt.Checkpointer(directory, save_interval_steps=2, async_save=False, run_config=first) as c:
        assert _train_with_checkpoints(tmp_path, c, state, start_step=0, steps=4).completed
    assert ckpt.scan_steps(directory)[0] == [2, 4]
    for f in (directory / "4" / ckpt.PARAMS).rglob("*"):
        if f.is_file() and f.parent.name == "d":  # OCDBT data files; the metadata stays intact
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    with caplog.at_level(logging.WARNING, logger="prorank_jax.checkpoint"):
        with ckpt.Checkpointer(directory, save_interval_steps=2, async_save=False, run_config=resumed) as c:
            restored = c.restore_latest(abstract_params=abstract.params, abstract_opt_state=abstract.opt_state)
            assert restored["step"] == 2 and float(restored["params"]["w"]) == 2.0
            state = state._replace(params=restored["params"], opt_state=restored["opt_state"])
            result = _train_with_checkpoints(tmp_path, c, state, start_step=restored["step"], steps=6)
            assert c.all_steps() == [2, 4, 6]
            at4 = c.restore(4, abstract_params=abstract.params)
            configs = {step: c.restore_config(step) for step in (2, 4, 6)}
    assert f"checkpoint folder {directory / '4'} could not be restored" in caplog.text
    assert result.completed and float(result.state.params["w"]) == 6.0
    assert float(at4["params"]["w"]) == 4.0  # the re-trained step 4, not the damaged one
    assert configs == {2: first, 4: resumed, 6: resumed}
    steps = [r["step"] for r in training.read_metrics(tmp_path)]
    assert steps == [1, 2, 3, 4, 3, 4, 5, 6]  # the resumed run re-did steps 3 and 4
