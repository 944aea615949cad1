"""Preemption on multi-process runs: every process stops (and saves) at the same step.

The real test starts two CPU processes joined by jax.distributed.initialize; only
process 0 receives SIGTERM, and both must leave run_loop after the same step.
"""

from __future__ import annotations

import json
import os
import socket
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from prorank_jax import preemption
from tests.helpers.env import xla_flags

REPO = Path(__file__).resolve().parents[2]

_PROCESS_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import jax
    import jax.numpy as jnp
    import optax

    port, process_id, out_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=process_id, initialization_timeout=60)
    from prorank_jax import preemption, training
    from prorank_jax.status import install_cli_handler

    install_cli_handler()  # status lines on stdout, as the `prorank` command shows them
    assert jax.process_count() == 2, jax.process_count()
    agreed = {"mine_only": preemption.any_process(process_id == 0), "nobody": preemption.any_process(False)}
    print("COLLECTIVES OK", flush=True)

    calls = []

    def produce(state, rng):
        calls.append(1)
        if process_id == 0 and len(calls) == 3:  # during step index 2, on this process only
            os.kill(os.getpid(), signal.SIGTERM)
        return training.StepOutput({"delta": jnp.ones(())})

    def train_step(state, batch):
        params = {"w": state.params["w"] + batch["delta"]}
        return state._replace(step=state.step + 1, params=params), {"loss": params["w"]}

    state = training.init_train_state({"w": jnp.zeros(())}, optax.sgd(1.0))
    loop = training.LoopConfig(steps=50, log_every=1, progress_bar=False)
    result = training.run_loop(state=state, start_step=0, train_step=train_step, produce=produce, loop=loop,
                               out_dir=out_dir, base_rng=jax.random.key(0))
    print("RESULT " + json.dumps({"agreed": agreed, "last_step": result.last_step, "completed": result.completed,
                                  "signalled_here": preemption.preemption_requested()}), flush=True)
    jax.distributed.shutdown()
""")

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_sigterm_on_one_process_stops_every_process_at_the_same_step(tmp_path):
    script = tmp_path / "process.py"
    script.write_text(_PROCESS_SCRIPT)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env["XLA_FLAGS"] = xla_flags()  # one CPU device per process
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), str(tmp_path / f"out{i}")],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=120))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failed = [(i, out, err) for i, (proc, (out, err)) in enumerate(zip(procs, outputs)) if proc.returncode != 0]
    # No skip: the pinned jax runs CPU collectives across processes (gloo), so a failure here
    # is a failure of the agreement or of its set-up.
    assert not failed, "\n".join(f"process {i} failed:\n{out[-2000:]}\n{err[-4000:]}" for i, out, err in failed)

    results = [json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
               for out, _ in outputs]
    for result in results:
        assert result["agreed"] == {"mine_only": True, "nobody": False}
        # Step index 2 ran, then the agreed stop: both leave after the same loop step.
        assert result["last_step"] == 3 and result["completed"] is False
    assert [r["signalled_here"] for r in results] == [True, False]  # process 1 stopped only by agreement
    assert "preemption signal: saved step 3" in outputs[1][0]


def test_single_process_agreement_is_local_and_gathers_nothing(monkeypatch):
    from jax.experimental import multihost_utils

    def no_gather(*args, **kwargs):
        raise AssertionError("a single process must not run a collective")

    monkeypatch.setattr(multihost_utils, "process_allgather", no_gather)
    assert preemption.any_process(True) is True and preemption.any_process(False) is False
    with preemption.preemption_guard():
        assert preemption.stop_requested() is False


def test_agreement_combines_every_process_flag(monkeypatch):
    """The multi-process branch, with the gather faked: one True anywhere stops all."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    others = {"flags": [0, 0, 0]}
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    monkeypatch.setattr(multihost_utils, "process_allgather",
                        lambda x: np.array([int(x), *others["flags"]], np.int32))
    assert preemption.any_process(False) is False
    assert preemption.any_process(True) is True
    others["flags"] = [0, 1, 0]
    assert preemption.any_process(False) is True


def test_preemption_guard_only_sets_a_flag_and_restores_the_previous_handler():
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda *a: calls.append(a))
    try:
        with preemption.preemption_guard():
            assert not preemption.preemption_requested()
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.time() + 5
            while not preemption.preemption_requested() and time.time() < deadline:
                time.sleep(0.01)
            assert preemption.preemption_requested()
        assert not calls  # the guard's handler ran, not the outer one
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 5
        while not calls and time.time() < deadline:
            time.sleep(0.01)
        assert calls  # the outer handler is back
        with preemption.preemption_guard():
            assert not preemption.preemption_requested()  # a new guard starts with a clear flag
    finally:
        signal.signal(signal.SIGTERM, previous)
