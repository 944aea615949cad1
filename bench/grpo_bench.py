"""Stage-1 GRPO (rollout + update), prorank-jax vs TRL's GRPOTrainer, on the tiny model or a real one.

    PYTHONPATH=. .venv/bin/python bench/grpo_bench.py --steps 10 --warmup 3 --prompts 8 --group 8 \\
        --completion-tokens 1 4 --threads 2

At a real run's shape (launch/configs/grpo_smollm2_135m.yaml: SmolLM2-135M-Instruct, its
stage-1 pairs, query + document cut to 160 tokens, prompts padded to 256, 8 prompts x
G=8, at most 2 completion tokens):

    PYTHONPATH=. .venv/bin/python bench/grpo_bench.py --model runs/smollm2-135m-instruct \\
        --data data/stage1/train_pairs.jsonl --max-length 160 --buckets 256 \\
        --steps 3 --warmup 1 --prompts 8 --group 8 --completion-tokens 2 --threads 2 --trl-micro-batch 16

(--trl-micro-batch: TRL keeps every layer's activations of every sequence for the
backward, about 1 MB per token for SmolLM2's 30 layers, so its 64 whole prompt +
completion sequences would need tens of GB; it then runs the forwards and backward 16
sequences at a time with gradient accumulation, still one rollout and one update per
step. Ours runs each prompt once in the update, so it needs no such split.)

Both sides start from the same weights and tokenizer: by default the bundled tiny Qwen2
config, random init by prorank_jax.model.init_params, written once with prorank_jax.hf.save;
with --model, that HF folder as it is. TRL reads the folder through AutoModelForCausalLM
and AutoTokenizer. Both see the same prompts in the same order and train
with the same GRPO settings: G completions per prompt, `prompts` prompts per step,
temperature 1, no top-p/top-k, beta = 0.04 (k3 KL to a frozen reference), eps = 0.2,
per-sequence mean aggregation ("grpo"), group std scaling (ddof 1, eps 1e-4), one
update per rollout, AdamW at a constant learning rate, gradients clipped to norm 1.

  * prorank-jax: the `prorank train-grpo` code path. Prompts come from the bundled
    stage-1 data (grpo_tiny's data settings) or from --data (a `prorank prepare-data`
    stage-1 pairs JSONL) through make_stage1_iterator and the folder's prompt family
    (mxbai-v2 unless its prorank.json says otherwise); completions end at every EOS id of
    the tokenizer, config.json and generation_config.json, as in `prorank train-grpo`;
    rl.train.GRPOStage.produce does the rollout (jitted sampling, rewards,
    group advantages, reference log-probs) and rl.train.grpo_train_step runs
    prorank_jax.training.make_train_step around rl.train.grpo_loss (jax.jit, float32).
  * TRL: trl.GRPOTrainer (transformers generate + PyTorch autograd, float32, CPU) on
    the same prompts decoded to text (re-encoding them reproduces the same token ids;
    the script checks it) with rl.rewards' "format" and "correctness" wrapped as TRL
    reward functions that decode completions exactly as our rollout does.

A step is the whole of one rollout + one update (data, generation, rewards,
reference/policy log-probs, backward, optimizer), timed wall-clock and blocking on
the result. The first `warmup` steps (compilation, first-call overheads) are
untimed on both sides; warmup is lengthened where needed so that every prompt
width in the timed window has already been compiled once by our side. samples/s =
prompts * G / median wall seconds per step; the median CPU seconds per step
(time.process_time, all threads of the process) are printed beside it, as the
machine may be shared. Threads: torch uses `--threads`; XLA's CPU
client uses its own default thread pool (every core the machine has).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from bench.common import machine_line
from prorank_jax import hf, model, training
from prorank_jax import sampling as smp
from prorank_jax.config import ModelConfig
from prorank_jax.data import bundled_data_dir, bundled_tokenizer_dir
from prorank_jax.data.pipeline import DataConfig, load_config_examples, make_stage1_iterator
from prorank_jax.pretrained import ModelSource, generation_eos_token_ids, load_tokenizer
from prorank_jax.prompts import detect_prompt_family, make_prompt
from rl.config import GRPOConfig
from rl.rewards import get_reward
from rl.rollout import eos_token_ids, sampling_config
from rl.train import GRPOStage, grpo_train_step

# grpo_tiny's data settings, the defaults of --max-length and --buckets.
TINY_MAX_LENGTH, TINY_BUCKETS = 112, (160, 192)


def build_model(folder: Path, seed: int) -> Path:
    """The bundled tiny config, randomly initialised, saved as an HF folder with the bundled tokenizer."""
    config = ModelConfig.from_hf(json.loads((bundled_data_dir() / "tiny_model.json").read_text()))
    params = model.init_params(config, jax.random.key(seed))
    return hf.save(params, config, folder, tokenizer_dir=bundled_tokenizer_dir())


def data_config(prompts: int, pairs: str | None, max_length: int, buckets: tuple[int, ...]) -> DataConfig:
    """The bundled stage-1 data, or a stage-1 pairs JSONL; repeats forever as `prorank train-grpo` makes it do."""
    source = "jsonl" if pairs else "bundled"
    return DataConfig(source=source, path=pairs, split="train", batch_size=prompts, num_negatives=3,
                      max_length=max_length, buckets=buckets, seed=0, num_epochs=None)


def prompt_iterator(folder: Path, tokenizer, data: DataConfig, model_max_length: int):
    prompt = make_prompt(detect_prompt_family(folder), tokenizer, data.max_length, model_max_length)
    return make_stage1_iterator(load_config_examples(data, stage=1), prompt, data)


def completion_eos_ids(folder: Path, tokenizer, config: ModelConfig) -> tuple[int, ...]:
    """Every id that ends a completion, gathered as `prorank train-grpo` does for this folder."""
    return eos_token_ids(tokenizer, config, generation_eos_token_ids(ModelSource(path=str(folder))))


def plan_warmup(widths: list[int], warmup: int, steps: int) -> int:
    """Smallest w >= warmup such that every width in the timed window [w, w + steps) occurs before w."""
    w = warmup
    while True:
        window = widths[w:w + steps]
        if len(window) < steps:
            raise ValueError("not enough pre-drawn batches")
        if set(window) <= set(widths[:w]):
            return w
        w += 1


class Recorder:
    """Wraps the prompt iterator to keep what our side actually consumed (checked against TRL's)."""

    def __init__(self, it):
        self.it, self.seen = it, []

    def __next__(self):
        batch = next(self.it)
        self.seen.append(batch)
        return batch


def summarise(seconds: list[float], cpu_seconds: list[float], samples: int) -> dict:
    median = statistics.median(seconds)
    return {"median_s": median, "mean_s": statistics.fmean(seconds), "samples_per_s": samples / median,
            "cpu_s": statistics.median(cpu_seconds)}


def jax_side(folder: Path, grpo: GRPOConfig, data: DataConfig, opt: training.OptimizerConfig, total: int,
             warmup: int) -> tuple[dict, list[dict], list[dict]]:
    config, params = hf.load(folder)
    tokenizer = load_tokenizer(folder)
    mesh = training.MeshConfig().build()
    tx = training.make_optimizer(opt, total)
    abstract = jax.eval_shape(lambda p: training.init_train_state(p, tx), params)
    state_sharding = training.state_shardings(abstract, tx, mesh)
    params = jax.device_put(params, state_sharding.params)
    state = jax.jit(lambda p: training.init_train_state(p, tx), out_shardings=state_sharding)(params)
    # The pieces start_run builds, minus checkpointing and run metadata.
    base_rng = jax.random.key(0)
    prompts = Recorder(prompt_iterator(folder, tokenizer, data, config.max_position_embeddings))
    sampler = sampling_config(grpo, tokenizer, config, generation_eos_token_ids(ModelSource(path=str(folder))))
    stage = GRPOStage(config, grpo, tokenizer, ref_params=params, prompts=prompts, sampler=sampler)
    step = grpo_train_step(config, grpo, tx, mesh=mesh, state_sharding=state_sharding)
    seconds, cpu_seconds, metrics = [], [], []
    for i in range(total):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = stage.produce(state, training.step_rng(base_rng, i))
        state, m = step(state, out.batch)
        m = jax.device_get(m)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
        metrics.append({**out.host_metrics, "loss": float(m["loss"]), "kl": float(m["kl"]),
                        "prompt_width": out.batch["prompt_ids"].shape[1]})
    result = summarise(seconds[warmup:], cpu_seconds[warmup:], grpo.group_size * data.batch_size)
    result["first_steps_s"] = sum(seconds[:warmup])
    return result, metrics, prompts.seen


def trl_side(folder: Path, grpo: GRPOConfig, batches: list[dict], opt: training.OptimizerConfig, warmup: int,
             threads: int, eos: set[int], micro_batch: int | None) -> tuple[dict, dict]:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    # The same prompts, in the same order, as text; TRL re-tokenizes them, so check that
    # this gives back exactly our token ids (hence the same prompt lengths).
    rows = []
    for batch in batches:
        for ids, mask, label in zip(batch["input_ids"], batch["attention_mask"], batch["label"]):
            real = [int(t) for t, m in zip(ids, mask) if m]
            text = tokenizer.decode(real, skip_special_tokens=False)
            if tokenizer(text=[text])["input_ids"][0] != real:
                raise SystemExit(f"re-encoding a decoded prompt changes its ids: {text[:80]!r}...")
            rows.append({"prompt": text, "label": str(int(label))})

    def texts_of(completion_ids):
        # Decoded as rl.rollout does (sampling.completion_texts): minus a terminating EOS (any of ours),
        # special tokens kept, so "<|im_start|>1" does not pass for "1".
        out = []
        for ids in completion_ids:
            ids = [int(t) for t in ids]
            if ids and ids[-1] in eos:
                ids = ids[:-1]
            out.append(tokenizer.decode(ids, skip_special_tokens=False))
        return out

    def wrap(name):
        fn = get_reward(name, grpo.allowed_labels)

        def reward(completions, completion_ids, label, **kwargs):
            return [fn(text, lab) for text, lab in zip(texts_of(completion_ids), label)]

        reward.__name__ = name
        return reward

    names = list(grpo.reward_weights)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.times, self.cpu = [time.perf_counter()], [time.process_time()]

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())
            self.cpu.append(time.process_time())

    clock = Clock()
    steps = len(batches)
    prompts = len(batches[0]["label"])
    micro, accumulation = trl_batching(prompts * grpo.group_size, micro_batch)
    with tempfile.TemporaryDirectory() as out_dir:
        args = TRLConfig(
            output_dir=out_dir, max_steps=steps, per_device_train_batch_size=micro,
            gradient_accumulation_steps=accumulation, num_generations=grpo.group_size,
            max_completion_length=grpo.max_completion_tokens, temperature=grpo.temperature, top_p=grpo.top_p,
            top_k=grpo.top_k, beta=grpo.beta, epsilon=grpo.epsilon_low, epsilon_high=grpo.epsilon_high,
            num_iterations=grpo.updates_per_rollout, loss_type=grpo.loss_aggregation, scale_rewards="group",
            reward_weights=[grpo.reward_weights[n] for n in names],
            learning_rate=opt.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=opt.weight_decay, adam_beta1=opt.b1, adam_beta2=opt.b2, adam_epsilon=opt.eps,
            max_grad_norm=opt.max_grad_norm, shuffle_dataset=False, seed=0,
            use_cpu=True, bf16=False, fp16=False, report_to="none", logging_strategy="no", save_strategy="no",
            disable_tqdm=True, log_completions=False, dataloader_num_workers=0,
            # TRL turns gradient checkpointing on by default; ours runs with remat "none" (the
            # ModelSource default), so both keep activations and neither recomputes the forward.
            gradient_checkpointing=False,
            model_init_kwargs={"dtype": torch.float32},
        )
        trainer = GRPOTrainer(model=str(folder), reward_funcs=[wrap(n) for n in names], args=args,
                              train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[clock])
        trainer.train()
    seconds = list(np.diff(clock.times))
    if len(seconds) != steps:
        raise SystemExit(f"TRL ran {len(seconds)} steps, expected {steps}")
    result = summarise(seconds[warmup:], list(np.diff(clock.cpu))[warmup:], prompts * grpo.group_size)
    result["first_steps_s"] = sum(seconds[:warmup])
    # logging_strategy="no": the only log is the end-of-training one, GRPO's metrics averaged over all steps.
    logged = trainer.state.log_history[-1] if trainer.state.log_history else {}
    sanity = {k: float(logged[k]) for k in ("reward", "kl", "completions/mean_length") if k in logged}
    return result, sanity


def trl_batching(samples: int, micro_batch: int | None) -> tuple[int, int]:
    """TRL's per-device batch and gradient accumulation for one update over `samples` completions.

    TRL generates the whole step's samples at once either way (its generation batch is
    micro * accumulation), then runs the reference and policy forwards (and the backward)
    `micro` sequences at a time; a smaller micro batch only bounds the activations kept
    for the backward, which at a real model's prompt length do not fit in memory whole.
    """
    micro = micro_batch or samples
    if samples % micro:
        raise SystemExit(f"--trl-micro-batch {micro} does not divide the {samples} samples of a step")
    return micro, samples // micro


def peak_rss_gb() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (at least; see the docstring)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="G, completions per prompt")
    parser.add_argument("--completion-tokens", type=int, nargs="+", default=[1, 4],
                        help="max completion tokens; one row per value")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch intra-op threads")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0, help="init seed of the random model")
    parser.add_argument("--cache", default="runs/bench/grpo-tiny-random", help="where the random tiny model is kept")
    parser.add_argument("--model", help="an HF folder with its tokenizer to start both sides from "
                                        "(default: the bundled tiny config, random init)")
    parser.add_argument("--data", help="stage-1 pairs JSONL from `prorank prepare-data` (default: the bundled data)")
    parser.add_argument("--max-length", type=int, default=TINY_MAX_LENGTH, help="query + document token budget")
    parser.add_argument("--buckets", type=int, nargs="+", default=list(TINY_BUCKETS),
                        help="prompt length buckets of the pipeline")
    parser.add_argument("--trl-micro-batch", type=int,
                        help="TRL's per-device batch (sequences per forward/backward), with gradient accumulation "
                             "up to one update per step (default: all samples of a step at once)")
    parser.add_argument("--skip-trl", action="store_true")
    args = parser.parse_args()

    folder = Path(args.model) if args.model else build_model(Path(args.cache), args.seed)
    opt = training.OptimizerConfig(learning_rate=args.lr, warmup_steps=0, end_lr_ratio=1.0, weight_decay=0.0,
                                   max_grad_norm=1.0)
    data = data_config(args.prompts, args.data, args.max_length, tuple(args.buckets))

    # Pre-draw the prompt batches (the pipeline is deterministic given its seed) to size
    # the warmup and to hand TRL the same prompts.
    config = ModelConfig.from_hf(folder)
    tokenizer = load_tokenizer(folder)
    it = prompt_iterator(folder, tokenizer, data, config.max_position_embeddings)
    drawn = [next(it) for _ in range(args.warmup + args.steps + 64)]
    warmup = plan_warmup([b["input_ids"].shape[1] for b in drawn], args.warmup, args.steps)
    total = warmup + args.steps
    drawn = drawn[:total]
    real = np.concatenate([b["attention_mask"].sum(1) for b in drawn[warmup:]])
    if any(int(np.min(b["example_mask"])) == 0 for b in drawn):
        raise SystemExit("a pre-drawn batch has padding rows; TRL would not see them")

    rows, notes = [], []
    for tokens in args.completion_tokens:
        grpo = GRPOConfig(group_size=args.group, max_completion_tokens=tokens, beta=0.04)
        ours, metrics, seen = jax_side(folder, grpo, data, opt, total, warmup)
        ours_rss = peak_rss_gb()
        for a, b in zip(seen, drawn):
            if not (np.array_equal(a["input_ids"], b["input_ids"]) and np.array_equal(a["label"], b["label"])):
                raise SystemExit("our side did not consume the pre-drawn prompt batches")
        timed = metrics[warmup:]
        notes.append(f"T={tokens} prorank-jax: reward {np.mean([m['reward'] for m in timed]):.3f}, "
                     f"kl {np.mean([m['kl'] for m in timed]):.2e}, completion length "
                     f"{np.mean([m['completion_length'] for m in timed]):.2f}; first {warmup} steps "
                     f"{ours['first_steps_s']:.1f} s; process peak RSS so far {ours_rss:.1f} GB")
        print(f"done: {notes[-1]}; median step {ours['median_s']:.1f} s", flush=True)  # long runs: show progress
        row = {"tokens": tokens, "ours": ours, "trl": None}
        if not args.skip_trl:
            trl, sanity = trl_side(folder, grpo, drawn, opt, warmup, args.threads,
                                   set(completion_eos_ids(folder, tokenizer, config)), args.trl_micro_batch)
            row["trl"] = trl
            notes.append(f"T={tokens} TRL (all steps): " + ", ".join(f"{k} {v:.3g}" for k, v in sanity.items())
                         + f"; first {warmup} steps {trl['first_steps_s']:.1f} s; process peak RSS so far "
                         f"{peak_rss_gb():.1f} GB")
            print(f"done: {notes[-1]}; median step {trl['median_s']:.1f} s", flush=True)
        rows.append(row)

    import torch
    import transformers

    try:
        import trl as trl_mod
        trl_version = trl_mod.__version__
    except ImportError:
        trl_version = "not installed"
    widths = sorted({b["input_ids"].shape[1] for b in drawn[warmup:]})
    prefill = sorted({smp.bucket_length(w) for w in widths})
    trl_widths = sorted({int(b["attention_mask"].sum(1).max()) for b in drawn[warmup:]})
    print(f"machine: {machine_line()}, torch {torch.__version__} ({args.threads} threads), "
          f"transformers {transformers.__version__}, trl {trl_version}")
    shape = f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}"
    if args.model:
        print(f"model: {folder} ({config.model_type}, {shape}), its own weights and tokenizer, float32")
    else:
        print(f"model: bundled tiny Qwen2 ({shape}), random init seed {args.seed}, float32")
    print(f"data: {args.data or 'bundled stage-1 pairs'}, max_length {args.max_length}, buckets {args.buckets}")
    print(f"per step: {args.prompts} prompts x G={args.group} = {args.prompts * args.group} samples; "
          f"real prompt tokens mean {real.mean():.1f} (min {real.min()}, max {real.max()}), identical on both sides; "
          f"padded widths: ours {widths} (pipeline buckets; sampler prefill {prefill}), "
          f"TRL {trl_widths[0]}-{trl_widths[-1]} (longest prompt of the batch)")
    micro, accumulation = trl_batching(args.prompts * args.group, args.trl_micro_batch)
    print(f"timed: {args.steps} steps after {warmup} untimed; beta {0.04}, lr {args.lr}, one update per rollout; "
          f"TRL forwards/backwards {micro} sequences at a time, {accumulation} accumulated per update")
    print()
    print("| completion tokens | implementation | median step (s) | mean step (s) | samples/s | ours / TRL "
          "| median CPU s/step | samples per CPU-s |")
    print("|---|---|---|---|---|---|---|---|")
    samples = args.prompts * args.group
    for row in rows:
        ours, trl = row["ours"], row["trl"]
        ratio = f"{ours['samples_per_s'] / trl['samples_per_s']:.2f}x" if trl else "n/a"
        print(f"| {row['tokens']} | prorank-jax (jit, XLA CPU) | {ours['median_s']:.3f} | {ours['mean_s']:.3f} | "
              f"{ours['samples_per_s']:,.1f} | {ratio} | {ours['cpu_s']:.3f} | {samples / ours['cpu_s']:,.1f} |")
        if trl:
            print(f"| {row['tokens']} | TRL GRPOTrainer (torch CPU) | {trl['median_s']:.3f} | {trl['mean_s']:.3f} | "
                  f"{trl['samples_per_s']:,.1f} | | {trl['cpu_s']:.3f} | {samples / trl['cpu_s']:,.1f} |")
    print()
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
