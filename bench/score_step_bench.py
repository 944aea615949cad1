"""Stage-2 training step (score loss + AdamW), prorank-jax vs PyTorch, Qwen2.5-0.5B-shaped or a real model.

    python bench/score_step_bench.py --layers 4 --groups 2 --negatives 3 --length 128 --threads 2

By default the model is Qwen2.5-0.5B's shape with random weights. With --model, an HF
folder's own config and weights (and its tokenizer's ids of "1" and "0"), e.g. at the
stage-2 shape of launch/configs/score_smollm2_135m.yaml (4 groups x (1 + 3) x 256):

    python bench/score_step_bench.py --model runs/smollm2-135m-instruct --groups 4 --negatives 3 \\
        --length 256 --threads 2

Both sides run the same step on the same weights and batch (random token ids, no
padding: the step's cost does not depend on which tokens they are): one forward over
groups * (1 + negatives) prompts of `length` tokens, s = h_last . (W["1"] - W["0"])
(the last hidden state times two LM-head columns; no vocabulary-sized logits),
listwise softmax cross-entropy of the positive (slot 0) over its group, backward,
global-norm clipping to 1.0 and an AdamW update of every parameter.

  * prorank-jax: scoring.train.score_loss inside prorank_jax.training.make_train_step
    (jax.jit, float32), i.e. exactly the `prorank train-score` step.
  * PyTorch: the folder loaded by transformers' AutoModelForCausalLM (Qwen2ForCausalLM,
    LlamaForCausalLM, ...; float32, eager autograd), the same loss written with torch
    ops, torch.nn.utils.clip_grad_norm_ and torch.optim.AdamW.

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
import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import machine_line, qwen25_05b_config, random_hf_folder, timed
from prorank_jax import hf, model, training
from prorank_jax import sharding as shd
from prorank_jax.config import ModelConfig
from scoring.losses import ScoreLossConfig
from scoring.train import score_loss

# Qwen2.5's tokenizer encodes "1" and "0" as single tokens with these ids (the random model has no tokenizer).
QWEN25_YES_ID, QWEN25_NO_ID = 16, 15


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


def answer_ids(folder: Path, config) -> tuple[int, int]:
    """The ids of "1" and "0" as the folder's prompt family reads them from its tokenizer."""
    from prorank_jax.pretrained import load_tokenizer
    from prorank_jax.prompts import detect_prompt_family, make_prompt

    prompt = make_prompt(detect_prompt_family(folder), load_tokenizer(folder), None, config.max_position_embeddings)
    return prompt.yes_id, prompt.no_id


def jax_side(folder: Path, batch, opt: training.OptimizerConfig, steps: int, repeats: int,
             yes_id: int, no_id: int):
    config, params = hf.load(folder)
    mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    tx = training.make_optimizer(opt, 10_000)
    abstract = jax.eval_shape(lambda p: training.init_train_state(p, tx), params)
    sharding = training.state_shardings(abstract, tx, mesh)
    state = jax.jit(lambda p: training.init_train_state(p, tx), out_shardings=sharding)(
        jax.device_put(params, sharding.params))
    del params
    loss_fn = lambda p, b: score_loss(p, b, config=config, loss_config=ScoreLossConfig(),  # noqa: E731
                                      yes_id=yes_id, no_id=no_id)
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


def torch_side(folder: Path, batch, opt: training.OptimizerConfig, steps: int, repeats: int, threads: int,
               yes_id: int, no_id: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    net = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    net.train()
    decoder, head = net.base_model, net.get_output_embeddings()  # tied or untied, as the folder says
    optimizer = torch.optim.AdamW(net.parameters(), lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps,
                                  weight_decay=opt.weight_decay)
    groups, slots, length = batch["input_ids"].shape
    ids = torch.tensor(batch["input_ids"].reshape(groups * slots, length), dtype=torch.long)
    mask = torch.tensor(batch["attention_mask"].reshape(groups * slots, length), dtype=torch.long)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
        weight = head.weight  # [vocab, hidden]
        scores = (hidden @ (weight[yes_id] - weight[no_id])).view(groups, slots)
        loss = (torch.logsumexp(scores, dim=1) - scores[:, 0]).mean()
        loss.backward()
        if opt.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), opt.max_grad_norm)
        optimizer.step()
        return float(loss.detach())

    losses = [step() for _ in range(steps)]
    seconds = timed(step, repeats)
    return torch.__version__, type(net).__name__, seconds, losses


def progress(line: str) -> None:
    """A side's result as soon as it is known, with the process's peak memory so far (Linux: KiB)."""
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{line}; process peak RSS so far {peak_gb:.1f} GB", flush=True)


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
    parser.add_argument("--cache", default="runs/bench/qwen25-05b-random", help="where the random model is kept")
    parser.add_argument("--model", help="an HF folder (config, weights, tokenizer) for both sides "
                                        "(default: Qwen2.5-0.5B's shape, random weights)")
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()
    if args.model and args.layers is not None:
        parser.error("--layers cuts the random Qwen2.5-0.5B shape; a --model folder is run as it is")

    if args.model:
        folder = Path(args.model)
        config = ModelConfig.from_hf(folder)
        yes_id, no_id = answer_ids(folder, config)
        described = f"{folder} ({config.model_type}), its own weights"
    else:
        config = qwen25_05b_config(args.layers)
        folder = random_hf_folder(Path(args.cache + (f"-{args.layers}l" if args.layers else "")), config)
        yes_id, no_id = QWEN25_YES_ID, QWEN25_NO_ID
        described = "Qwen2.5-0.5B shape, random weights"
    batch = make_batch(args.groups, args.negatives, args.length, config.vocab_size)
    tokens = int(batch["attention_mask"].sum())
    opt = training.OptimizerConfig(learning_rate=args.lr, warmup_steps=0, end_lr_ratio=1.0, weight_decay=0.01)

    peak = matmul_peak_flops(args.matmul, args.repeats)
    config, compile_s, jax_s, jax_losses = jax_side(folder, batch, opt, 2, args.repeats, yes_id, no_id)
    progress(f"prorank-jax: median step {jax_s:.1f} s")
    flops = model_flops_per_step(config, tokens, args.length)
    rows = [("prorank-jax (jit, XLA CPU)", jax_s, jax_losses)]
    torch_version = "not run"
    if not args.skip_torch:
        torch_version, torch_class, torch_s, torch_losses = torch_side(folder, batch, opt, 2, args.repeats,
                                                                        args.threads, yes_id, no_id)
        rows.append((f"transformers {torch_class} + torch AdamW", torch_s, torch_losses))
        progress(f"PyTorch: median step {torch_s:.1f} s")

    n_total = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(
        jax.eval_shape(lambda: model.init_params(config, jax.random.key(0)))))
    print(f"machine: {machine_line()}, torch {torch_version} ({args.threads} threads)")
    print(f"model: {described}, {config.num_hidden_layers} layers, {n_total / 1e6:.0f}M params "
          f"({non_embedding_params(config) / 1e6:.1f}M non-embedding), float32; batch {args.groups} groups x "
          f"{1 + args.negatives} docs x {args.length} tokens = {tokens} tokens/step; "
          f"s = logit({yes_id}) - logit({no_id})")
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
