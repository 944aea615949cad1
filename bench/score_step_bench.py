"""Stage-2 training step (score loss + AdamW) of a Qwen2.5-0.5B-shaped model: prorank-jax vs PyTorch.

    python bench/score_step_bench.py --layers 4 --groups 2 --negatives 3 --length 128 --threads 2

Both sides run the same step on the same weights and batch: one forward over
groups * (1 + negatives) prompts of `length` tokens, s = h_last . (W["1"] - W["0"])
(the last hidden state times two LM-head columns; no vocabulary-sized logits),
listwise softmax cross-entropy of the positive (slot 0) over its group, backward,
global-norm clipping to 1.0 and an AdamW update of every parameter.

  * prorank-jax: scoring.train.score_loss inside prorank_jax.training.make_train_step
    (jax.jit, float32), i.e. exactly the `prorank train-score` step.
  * PyTorch: transformers Qwen2ForCausalLM (float32, eager autograd), the same loss
    written with torch ops, torch.nn.utils.clip_grad_norm_ and torch.optim.AdamW.

Model FLOPs per step (the PaLM-paper accounting; the causal mask is not halved):

    6 * N * T  +  12 * n_layers * n_heads * head_dim * L * T

with T = groups * (1 + negatives) * L tokens and N the non-embedding parameters
(the decoder layers and final norm): the embedding is a gather and the LM head is
read at two columns of one position per prompt, so neither does matmul work worth
counting. MFU = model FLOPs / step time / peak, with the peak the measured
float32 throughput of one large jnp.dot on this machine (2 * n^3 FLOPs).

Prints a markdown table, plus the first two steps' losses on both sides (same
weights and batch, so they must agree: a check that both run the same maths).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import machine_line, qwen25_05b_config, random_hf_folder, timed
from prorank_jax import hf, model, training
from prorank_jax import sharding as shd
from scoring.losses import ScoreLossConfig
from scoring.train import score_loss

# Qwen2.5's tokenizer encodes "1" and "0" as single tokens with these ids.
YES_ID, NO_ID = 16, 15


def matmul_peak_flops(n: int, repeats: int) -> float:
    """Measured float32 FLOP/s of an n x n x n jnp.dot (2 n^3 FLOPs)."""
    rng = np.random.RandomState(0)
    a = jnp.asarray(rng.randn(n, n).astype(np.float32))
    b = jnp.asarray(rng.randn(n, n).astype(np.float32))
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    return 2 * n**3 / timed(lambda: dot(a, b).block_until_ready(), repeats)


def model_flops_per_step(config, tokens: int, length: int) -> float:
    """6 * N * T + 12 * n_layers * n_heads * head_dim * L * T (see the module docstring)."""
    non_embedding = non_embedding_params(config)
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * length * tokens
    return 6 * non_embedding * tokens + attention


def non_embedding_params(config) -> int:
    d, q = config.hidden_size, config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    attn = d * q + 2 * d * kv + q * d + (q + 2 * kv if config.attention_bias else 0)
    mlp = 3 * d * config.intermediate_size
    norms = 2 * d
    return config.num_hidden_layers * (attn + mlp + norms) + d


def make_batch(groups: int, negatives: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    slots = 1 + negatives
    labels = np.zeros((groups, slots), np.int32)
    labels[:, 0] = 1
    return {
        "input_ids": rng.randint(0, vocab, (groups, slots, length)).astype(np.int32),
        "attention_mask": np.ones((groups, slots, length), np.int32),
        "labels": labels,
        "doc_mask": np.ones((groups, slots), np.int32),
        "example_mask": np.ones((groups,), np.int32),
    }


def jax_side(folder: Path, batch, opt: training.OptimizerConfig, steps: int, repeats: int):
    config, params = hf.load(folder)
    mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    tx = training.make_optimizer(opt, 10_000)
    abstract = jax.eval_shape(lambda p: training.init_train_state(p, tx), params)
    sharding = training.state_shardings(abstract, tx, mesh)
    state = jax.jit(lambda p: training.init_train_state(p, tx), out_shardings=sharding)(
        jax.device_put(params, sharding.params))
    del params
    loss_fn = lambda p, b: score_loss(p, b, config=config, loss_config=ScoreLossConfig(),  # noqa: E731
                                      yes_id=YES_ID, no_id=NO_ID)
    step = training.make_train_step(loss_fn, tx, mesh=mesh, state_sharding=sharding, batch_example=batch)
    placed = shd.shard_batch(batch, mesh)
    start = time.perf_counter()
    step = step.lower(state, placed).compile()
    compile_s = time.perf_counter() - start
    losses = []
    for _ in range(steps):
        state, metrics = step(state, placed)
        losses.append(float(metrics["loss"]))
    holder = {"state": state}

    def one():
        holder["state"], m = step(holder["state"], placed)
        jax.block_until_ready(m["loss"])

    seconds = timed(one, repeats)
    return config, compile_s, seconds, losses


def torch_side(folder: Path, batch, opt: training.OptimizerConfig, steps: int, repeats: int, threads: int):
    import torch
    from transformers import Qwen2ForCausalLM

    torch.set_num_threads(threads)
    net = Qwen2ForCausalLM.from_pretrained(folder, dtype=torch.float32)
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps,
                                  weight_decay=opt.weight_decay)
    groups, slots, length = batch["input_ids"].shape
    ids = torch.tensor(batch["input_ids"].reshape(groups * slots, length), dtype=torch.long)
    mask = torch.tensor(batch["attention_mask"].reshape(groups * slots, length), dtype=torch.long)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        hidden = net.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
        weight = net.lm_head.weight  # [vocab, hidden]; tied to the embedding
        scores = (hidden @ (weight[YES_ID] - weight[NO_ID])).view(groups, slots)
        loss = (torch.logsumexp(scores, dim=1) - scores[:, 0]).mean()
        loss.backward()
        if opt.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), opt.max_grad_norm)
        optimizer.step()
        return float(loss.detach())

    losses = [step() for _ in range(steps)]
    seconds = timed(step, repeats)
    return torch.__version__, seconds, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=None, help="fewer layers for a quick run (default 24)")
    parser.add_argument("--groups", type=int, default=4, help="groups per step (one positive each)")
    parser.add_argument("--negatives", type=int, default=3, help="negatives per group")
    parser.add_argument("--length", type=int, default=256, help="tokens per prompt")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (median) after two untimed ones")
    parser.add_argument("--matmul", type=int, default=2048, help="n of the n x n x n peak-FLOPs matmul")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch intra-op threads")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--cache", default="runs/bench/qwen25-05b-random")
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()

    config = qwen25_05b_config(args.layers)
    folder = random_hf_folder(Path(args.cache + (f"-{args.layers}l" if args.layers else "")), config)
    batch = make_batch(args.groups, args.negatives, args.length, config.vocab_size)
    tokens = int(batch["attention_mask"].sum())
    opt = training.OptimizerConfig(learning_rate=args.lr, warmup_steps=0, end_lr_ratio=1.0, weight_decay=0.01)

    peak = matmul_peak_flops(args.matmul, args.repeats)
    config, compile_s, jax_s, jax_losses = jax_side(folder, batch, opt, 2, args.repeats)
    flops = model_flops_per_step(config, tokens, args.length)
    rows = [("prorank-jax (jit, XLA CPU)", jax_s, jax_losses)]
    torch_version = "not run"
    if not args.skip_torch:
        torch_version, torch_s, torch_losses = torch_side(folder, batch, opt, 2, args.repeats, args.threads)
        rows.append(("transformers Qwen2ForCausalLM + torch AdamW", torch_s, torch_losses))

    n_total = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(
        jax.eval_shape(lambda: model.init_params(config, jax.random.key(0)))))
    print(f"machine: {machine_line()}, torch {torch_version} ({args.threads} threads)")
    print(f"model: Qwen2.5-0.5B shape, {config.num_hidden_layers} layers, {n_total / 1e6:.0f}M params "
          f"({non_embedding_params(config) / 1e6:.1f}M non-embedding), float32; batch {args.groups} groups x "
          f"{1 + args.negatives} docs x {args.length} tokens = {tokens} tokens/step")
    print(f"model FLOPs/step: 6*N*T + 12*layers*heads*head_dim*L*T = {flops / 1e9:.1f} GFLOP; "
          f"measured f32 matmul peak (jnp.dot {args.matmul}^3): {peak / 1e9:.1f} GFLOP/s")
    print(f"jax compile time: {compile_s:.1f} s")
    print("| implementation | median step (s) | tokens/s | model TFLOP/s | MFU | loss step 1 | loss step 2 |")
    print("|---|---|---|---|---|---|---|")
    for name, seconds, losses in rows:
        print(f"| {name} | {seconds:.3f} | {tokens / seconds:,.0f} | {flops / seconds / 1e12:.3f} | "
              f"{flops / seconds / peak:.1%} | {losses[0]:.6f} | {losses[1]:.6f} |")


if __name__ == "__main__":
    main()
