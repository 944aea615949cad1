"""run_loop's schedule of evaluations: the starting model first, then every eval_every steps."""

import jax
import jax.numpy as jnp
import optax

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
