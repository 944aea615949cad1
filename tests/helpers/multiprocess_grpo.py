"""One process of the multi-process checks in tests/rl/test_multiprocess.py.

    python -m tests.helpers.multiprocess_grpo PORT PROCESS_ID NUM_PROCESSES OUT_DIR

With NUM_PROCESSES = 2 the processes join through jax.distributed (CPU collectives over
gloo, one CPU device each) on a mesh data=1 x fsdp=2, so every parameter matrix is split
over the two processes; with 1 it is the single-process reference on one device. Each
process takes its own prompts (process p the rows 2p, 2p+1 of PROMPT_PAIRS, padded to its
own width, as the per-process stage-1 iterator gives them) and
  1. runs one GRPO rollout, writing its rows to rollout_<p>.npz;
  2. runs one GRPO update (two optimizer steps on the rollout) and, on process 0, writes
     the updated parameters to params.npz;
  3. evaluates a Reranker on the bundled test split (top 4 BM25 candidates) into
     OUT_DIR/eval (only process 0 writes) and reports how many pairs it scored itself.
Prints one line "RESULT {json}".
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import jax

PROMPT_PAIRS = [  # (query index, document index) into the bundled test split, lengths differ
    (0, 0), (1, 5), (2, 11), (3, 17),
]
GROUP = 4


def main(port: str, process_id: int, num_processes: int, out_dir: Path) -> dict:
    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=60)
    import numpy as np
    from prorank_jax import model, training
    from prorank_jax import sharding as shd
    from prorank_jax.config import ModelConfig
    from prorank_jax.data import bundled_data_dir, load_beir
    from prorank_jax.bundled import bundled_tokenizer_dir
    from prorank_jax.pretrained import load_tokenizer
    from prorank_jax.prompts import RerankPrompt, left_pad
    from rl.config import GRPOConfig
    from rl.rollout import rollout, sampling_config
    from rl.train import grpo_loss
    from scoring.evaluate import evaluate
    from scoring.reranker import Reranker

    out_dir.mkdir(parents=True, exist_ok=True)
    config = ModelConfig.from_hf(bundled_data_dir() / "tiny_model.json")
    host_params = model.init_params(config, jax.random.key(3), init_std=0.1)
    host_ref = model.init_params(config, jax.random.key(4), init_std=0.1)
    tokenizer = load_tokenizer(bundled_tokenizer_dir(), config)
    prompt = RerankPrompt(tokenizer, 112, config.max_position_embeddings)
    data = load_beir(bundled_data_dir(), "test")
    qids, dids = sorted(data.queries), sorted(data.corpus)

    mesh = shd.make_mesh(data=1, fsdp=2) if num_processes > 1 else shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    # Built from each process's (identical) host copy; jax.device_put would first compare
    # every leaf across processes, one compiled all-gather each.
    place = lambda tree: jax.tree_util.tree_map(  # noqa: E731
        lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i, x=np.asarray(x): x[i]),
        tree, shd.param_shardings(tree, mesh))
    params, ref_params = place(host_params), place(host_ref)

    # This process's prompts, padded to its own width (the widest of them rounded up to 8).
    rows = PROMPT_PAIRS if num_processes == 1 else PROMPT_PAIRS[2 * process_id: 2 * process_id + 2]
    encoded = prompt.encode_batch([data.queries[qids[q]] for q, _ in rows], [data.corpus[dids[d]] for _, d in rows])
    width = -(-max(len(e.input_ids) for e in encoded) // 8) * 8
    ids, mask = left_pad([e.input_ids for e in encoded], width, prompt.pad_id)
    prompts = {"input_ids": ids, "attention_mask": mask, "label": np.array([1, 0] * (len(rows) // 2), np.int32)}

    grpo = GRPOConfig(group_size=GROUP, max_completion_tokens=2, beta=0.04, updates_per_rollout=2, temperature=1.0)
    sampler = sampling_config(grpo, tokenizer, config)
    batch, _ = rollout(params, ref_params, config, prompts, jax.random.key(5), grpo, sampler, tokenizer)
    np.savez(out_dir / f"rollout_{process_id}.npz", **{k: np.asarray(v) for k, v in batch.items()})

    # eps well above float noise: Adam divides a gradient by its own scale, so with a tiny eps a
    # gradient that is 0 up to reduction-order noise (1e-9) would still move its weight by ~lr.
    tx = training.make_optimizer(training.OptimizerConfig(learning_rate=1e-2, warmup_steps=0, eps=1e-3), 10)
    abstract = jax.eval_shape(lambda p: training.init_train_state(p, tx), params)
    state_sharding = training.state_shardings(abstract, tx, mesh)
    state = jax.jit(lambda p: training.init_train_state(p, tx), out_shardings=state_sharding)(params)
    step = training.make_train_step(functools.partial(grpo_loss, config=config, grpo=grpo), tx, mesh=mesh,
                                    state_sharding=state_sharding, batch_example=batch, donate=False)
    global_batch = shd.shard_batch(batch, mesh)
    for _ in range(grpo.updates_per_rollout):
        state, _ = step(state, global_batch)
    # One jitted all-gather of the whole tree (one compile), then this process's full copy.
    whole = jax.jit(lambda tree: tree, out_shardings=shd.replicated(mesh))(state.params)
    flat, _ = jax.tree_util.tree_flatten_with_path(whole)
    updated = {jax.tree_util.keystr(path): np.asarray(x.addressable_shards[0].data) for path, x in flat}
    if process_id == 0:
        np.savez(out_dir / "params.npz", **updated)

    # Whole prompts in one batch per process: one compiled program each (processes are slow to compile).
    reranker = Reranker(config, host_params, tokenizer, max_length=112, batch_size=32, show_progress=False,
                        reuse_prefix=False, pack_tokens=False)
    scored = []
    predict = reranker.predict
    reranker.predict = lambda queries, documents, **kw: scored.append(len(queries)) or predict(queries, documents, **kw)
    evaluate(reranker, data, "test", top_k=4, out_dir=out_dir / "eval")
    embed_spec = str(params["model"]["embed_tokens"]["embedding"].sharding.spec)
    return {"process": process_id, "processes": jax.process_count(), "devices": jax.device_count(),
            "pairs_scored_here": sum(scored), "embed_spec": embed_spec, "prompt_width": width}


if __name__ == "__main__":
    result = main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    print("RESULT " + json.dumps(result), flush=True)
    if int(sys.argv[3]) > 1:
        jax.distributed.shutdown()
